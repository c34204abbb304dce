//! Raw durable-enqueue capacity of the queue thread (`queue::writer::spawn` + `StoreHandle::enqueue`),
//! the path the sampler uses, with the daemon's settings (WAL, synchronous = FULL, group
//! commit every `commit_interval`, default 50 ms).
//!
//! Built as an example (release profile, like the shipped binary; never run by
//! `cargo test`) and run by `scripts/bench.sh`:
//!
//! ```sh
//! cargo build --release --example enqueue_bench
//! target/release/examples/enqueue_bench DIR SECONDS RATE[,RATE...]
//! ```
//!
//! DIR must be on a real disk (not tmpfs/overlay) for `write_bytes` to mean anything.
//! For each RATE (readings/s; `0` = unpaced burst, as fast as one thread can hand them
//! over) a fresh queue is opened, one producer thread enqueues at that rate for SECONDS
//! in 1 ms steps, then drops the handle and waits for the queue thread's final commit.
//! `readings_per_s` = readings durably committed / wall time from the first enqueue to the
//! last commit; `kept_up` = every reading committed (none dropped) and the final commit
//! came within 0.5 s of the last enqueue. One JSON line per rate.

use std::time::{Duration, Instant, SystemTime};

use profilo_gateway::clock::{boot_id, Clock};
use profilo_gateway::config::QueueConfig;
use profilo_gateway::queue::writer::{self, Captured};
use profilo_gateway::queue::Queue;
use profilo_gateway::reading::{from_unix_ms, unix_ms, Reading};

/// Bounds the producer in burst mode (the channel is unbounded).
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

fn reading(n: u64, ms: i64) -> Captured {
    let mut reading = Reading::new(from_unix_ms(ms));
    reading
        .fields
        .insert("temperature".into(), 21.5 + (n % 100) as f64 / 10.0);
    reading
        .fields
        .insert("humidite".into(), 48.0 + (n % 37) as f64 / 10.0);
    reading
        .fields
        .insert("accelerometre".into(), 0.98 + (n % 11) as f64 / 100.0);
    Captured {
        reading,
        monotonic_ms: ms,
        clock_synced: true,
    }
}

fn run(
    dir: &std::path::Path,
    seconds: f64,
    rate: u64,
) -> Result<String, Box<dyn std::error::Error>> {
    let path = dir.join(format!("enqueue-bench-{rate}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let config = QueueConfig {
        path: path.clone(),
        max_readings: 1_000_000,
        ..QueueConfig::default()
    };
    let queue = Queue::open(&config)?;
    let write_before = io_counter("write_bytes:");
    let start = Instant::now();
    let (handle, thread) =
        writer::spawn(queue, config.commit_interval, boot_id(), Clock::system())?;
    let run_for = Duration::from_secs_f64(seconds);
    let mut n: u64 = 0;
    let mut ms = unix_ms(SystemTime::now());
    let step = Duration::from_millis(1);
    let mut next = start;
    while n < MAX_READINGS && start.elapsed() < run_for {
        // Readings due by now at `rate`; a burst hands over 256 at a time.
        let due = if rate == 0 {
            n + 256
        } else {
            (start.elapsed().as_secs_f64() * rate as f64) as u64
        };
        while n < due {
            ms += 1;
            handle.enqueue(reading(n, ms))?;
            n += 1;
        }
        if rate != 0 {
            next += step;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    let produce_s = start.elapsed().as_secs_f64();
    drop(handle);
    thread.join().map_err(|_| "queue thread panicked")?;
    let elapsed = start.elapsed().as_secs_f64();
    let write_bytes = io_counter("write_bytes:").saturating_sub(write_before);
    let stats = Queue::open_read_only(&path)?.stats()?;
    let committed = stats.pending;
    let kept_up = committed == n && elapsed - produce_s < 0.5;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(format!(
        "{{\"target_rate\":{rate},\"enqueued\":{n},\"committed\":{committed},\"dropped_total\":{},\
         \"produce_s\":{produce_s:.3},\"elapsed_s\":{elapsed:.3},\"readings_per_s\":{:.0},\
         \"write_bytes\":{write_bytes},\"write_bytes_per_reading\":{:.1},\"kept_up\":{kept_up}}}",
        stats.dropped_total,
        committed as f64 / elapsed,
        write_bytes as f64 / committed.max(1) as f64
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: enqueue_bench DIR SECONDS RATE[,RATE...]   (RATE 0 = unpaced burst)";
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let seconds: f64 = args.next().ok_or(usage)?.parse()?;
    let rates: Vec<u64> = args
        .next()
        .ok_or(usage)?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&dir)?;
    for rate in rates {
        println!("{}", run(&dir, seconds, rate)?);
    }
    Ok(())
}
