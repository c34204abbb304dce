//! Building sensors from validated `[[sensors]]` entries, without opening any device.
//! What each type builds (and whether its reads run on their own thread) is said by
//! the type itself, in `SensorType::build`.

use std::time::Duration;

use super::config::{resolve_defaults, validate, SensorConfig};
use super::{worker, Sensor, SensorError};

/// Validates the configuration, then builds its sensors (with [`resolve_defaults`])
/// without opening any device, for one-off reads (`sensors read`): a read that hangs
/// gives up after [`worker::MAX_DEADLINE`]. The daemon uses [`build_for_interval`].
pub fn build(configs: &[SensorConfig]) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    build_with_deadline(configs, worker::MAX_DEADLINE)
}

/// [`build`] for sampling every `interval`: a read that hangs gives up after
/// [`worker::deadline`]`(interval)`.
pub fn build_for_interval(
    configs: &[SensorConfig],
    interval: Duration,
) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    build_with_deadline(configs, worker::deadline(interval))
}

fn build_with_deadline(
    configs: &[SensorConfig],
    deadline: Duration,
) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    validate(configs)?;
    Ok(resolve_defaults(configs)
        .iter()
        .enumerate()
        .map(|(index, config)| config.kind().build(index, deadline))
        .collect())
}
