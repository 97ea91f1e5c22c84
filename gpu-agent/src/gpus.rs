//! GPU telemetry through NVML, which is loaded at run time: on a node without
//! an NVIDIA driver the agent says so once and reports no GPU.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use switchyard_schemas::{GpuProcess, GpuStats};
use tracing::{info, warn};

use crate::metrics as m;

pub struct Gpus {
    nvml: Option<Nvml>,
}

impl Gpus {
    pub fn open() -> Gpus {
        let nvml = match Nvml::init() {
            Ok(nvml) => {
                info!(gpus = nvml.device_count().unwrap_or(0), "NVML loaded");
                Some(nvml)
            }
            Err(e) => {
                info!(reason = %e, "no NVIDIA driver here; heartbeats report no GPU");
                None
            }
        };
        Gpus { nvml }
    }

    /// Reads every GPU now, and sets the agent's GPU gauges. Blocking: NVML
    /// calls go to the driver.
    pub fn sample(&self) -> Vec<GpuStats> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "NVML cannot count GPUs");
                return Vec::new();
            }
        };
        let mut gpus = Vec::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    warn!(index, error = %e, "NVML cannot open a GPU");
                    continue;
                }
            };
            let memory = device.memory_info().ok();
            let stats = GpuStats {
                index,
                name: device.name().unwrap_or_default(),
                utilization_pct: device.utilization_rates().ok().map(|u| u.gpu),
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                power_mw: device.power_usage().ok(),
                processes: device
                    .running_compute_processes()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| GpuProcess {
                        pid: p.pid,
                        memory_bytes: match p.used_gpu_memory {
                            UsedGpuMemory::Used(bytes) => Some(bytes),
                            UsedGpuMemory::Unavailable => None,
                        },
                    })
                    .collect(),
            };
            export(&stats);
            gpus.push(stats);
        }
        gpus
    }
}

fn export(gpu: &GpuStats) {
    let label = gpu.index.to_string();
    let set = |name: &'static str, value: Option<f64>| {
        if let Some(v) = value {
            metrics::gauge!(name, "gpu" => label.clone()).set(v);
        }
    };
    set(
        m::GPU_UTILIZATION,
        gpu.utilization_pct.map(|p| f64::from(p) / 100.0),
    );
    set(m::GPU_MEMORY_USED, gpu.memory_used_bytes.map(|b| b as f64));
    set(
        m::GPU_MEMORY_TOTAL,
        gpu.memory_total_bytes.map(|b| b as f64),
    );
    set(m::GPU_TEMPERATURE, gpu.temperature_c.map(f64::from));
    set(m::GPU_POWER, gpu.power_mw.map(|mw| f64::from(mw) / 1000.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the real NVML code wherever a driver is present: every GPU it
    /// counts is read, with a name and its memory. Without a driver the
    /// agent reports none; `SY_EXPECT_GPU=1` (set where a GPU is known to
    /// be, as on the GPU check machine) makes that path a failure, so a
    /// GPU machine cannot pass by not finding its driver.
    #[test]
    fn gpus_are_read_through_nvml_where_a_driver_is_present() {
        let gpus = Gpus::open();
        let expected = std::env::var("SY_EXPECT_GPU").is_ok_and(|v| v == "1");
        let Some(nvml) = &gpus.nvml else {
            assert!(!expected, "SY_EXPECT_GPU=1 but NVML did not load");
            assert!(gpus.sample().is_empty());
            return;
        };
        let count = nvml.device_count().expect("NVML counts GPUs");
        let sampled = gpus.sample();
        assert_eq!(sampled.len(), count as usize);
        for gpu in &sampled {
            assert!(!gpu.name.is_empty(), "{gpu:?}");
            assert!(gpu.memory_total_bytes.is_some_and(|b| b > 0), "{gpu:?}");
            assert!(gpu.memory_used_bytes <= gpu.memory_total_bytes, "{gpu:?}");
            assert!(gpu.utilization_pct.is_some_and(|u| u <= 100), "{gpu:?}");
        }
        println!("{sampled:#?}");
    }
}
