//! Raw durable-enqueue capacity of the queue thread (`store::spawn` + `StoreHandle::enqueue`),
//! the path the sampler uses, with the daemon's settings (WAL, synchronous = FULL, group
//! commit every `commit_interval`).
//!
//! Built as an example (release profile, like the shipped binary) and run by
//! `scripts/bench.sh`; not part of `cargo test`:
//!
//! ```sh
//! cargo build --release --example enqueue_bench
//! target/release/examples/enqueue_bench DIR [SECONDS] [COMMIT_INTERVAL_MS]
//! ```
//!
//! DIR must be on a real disk (not tmpfs) for `write_bytes` to mean anything. Readings
//! are handed over as fast as one producer thread can for SECONDS (default 3), then the
//! handle is dropped and the queue thread's final commit awaited: the rate is readings
//! durably committed per second of wall time, start to last fsync. Prints one JSON line.

use std::time::{Duration, Instant};

use profilo_gateway::clock::Clock;
use profilo_gateway::config::QueueConfig;
use profilo_gateway::queue::Queue;
use profilo_gateway::reading::Reading;
use profilo_gateway::store::{self, Captured};

/// Bounds the in-memory backlog of the unbounded channel if the writer falls behind.
const MAX_READINGS: u64 = 400_000;

fn io_counter(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or("usage: enqueue_bench DIR [SECONDS] [COMMIT_MS]")?,
    );
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let commit_ms: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("enqueue-bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let config = QueueConfig {
        path: path.clone(),
        max_readings: 1_000_000,
        commit_interval: Duration::from_millis(commit_ms),
        ..QueueConfig::default()
    };
    let queue = Queue::open(&config)?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let write_before = io_counter("write_bytes:");
    let start = Instant::now();
    let (handle, thread) = store::spawn(queue, config.commit_interval, boot_id, Clock::system())?;
    let run_for = Duration::from_secs_f64(seconds);
    let mut n: u64 = 0;
    let mut ms = profilo_gateway::reading::unix_ms(std::time::SystemTime::now());
    while n < MAX_READINGS && start.elapsed() < run_for {
        for _ in 0..256 {
            ms += 1;
            let mut reading = Reading::new(profilo_gateway::reading::from_unix_ms(ms));
            reading
                .fields
                .insert("temperature".into(), 21.5 + (n % 100) as f64 / 10.0);
            reading
                .fields
                .insert("humidite".into(), 48.0 + (n % 37) as f64 / 10.0);
            reading
                .fields
                .insert("accelerometre".into(), 0.98 + (n % 11) as f64 / 100.0);
            handle.enqueue(Captured {
                reading,
                monotonic_ms: ms,
                clock_synced: true,
            })?;
            n += 1;
        }
    }
    let produced_s = start.elapsed().as_secs_f64();
    drop(handle);
    thread.join().map_err(|_| "queue thread panicked")?;
    let elapsed = start.elapsed().as_secs_f64();
    let write_bytes = io_counter("write_bytes:").saturating_sub(write_before);
    let pending = Queue::open_read_only(&path)?.pending()?;
    println!(
        "{{\"readings\":{n},\"committed\":{pending},\"produce_s\":{produced_s:.3},\"elapsed_s\":{elapsed:.3},\
         \"readings_per_s\":{:.0},\"write_bytes\":{write_bytes},\"write_bytes_per_reading\":{:.1},\
         \"commit_interval_ms\":{commit_ms}}}",
        pending as f64 / elapsed,
        write_bytes as f64 / pending.max(1) as f64
    );
    Ok(())
}
