//! Where the model runs: `--device cpu|cuda[:N]` and `--dtype f32|bf16|f16` as the CLI and the nodes spell them.
//! A request the build or the machine cannot serve is an error, never a silent fall back to the CPU.
use candle_core::{DType, Device};

use crate::{Error, Result};

/// The device for `spec` (`cpu`, `cuda`, `cuda:N`); `None` picks the first GPU when the build has CUDA and one is
/// present, else the CPU. The choice is logged.
pub fn select_device(spec: Option<&str>) -> Result<Device> {
    let device = match spec.map(str::trim) {
        None | Some("") => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                Device::new_cuda(0)?
            } else {
                Device::Cpu
            }
        }
        Some("cpu") => Device::Cpu,
        Some(s) if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::invalid(
                        "device",
                        format!("{s:?}: the GPU number must be a non-negative integer"),
                    )
                })?,
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::invalid(
                    "device",
                    format!("{s:?}: this build has no CUDA support (build with `--features cuda`)"),
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                Error::invalid(
                    "device",
                    format!("{s:?}: no usable CUDA GPU {ordinal}: {e}"),
                )
            })?
        }
        Some(other) => {
            return Err(Error::invalid(
                "device",
                format!("{other:?} is not a device (cpu, cuda, cuda:N)"),
            ))
        }
    };
    tracing::info!("running the model on {}", describe(&device));
    Ok(device)
}

/// Checks the spelling of a device request (`cpu`, `auto`, `cuda`, `cuda:N`) without opening a device, so a
/// recipe's typo is reported when it loads.
pub fn check_device_name(spec: &str) -> Result<()> {
    let s = spec.trim();
    let ok = matches!(s, "cpu" | "auto" | "cuda")
        || s.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "device",
            format!("{spec:?} is not a device (cpu, auto, cuda, cuda:N)"),
        ))
    }
}

/// [`select_device`] for a request that may say `auto` (the first GPU when there is one, else the CPU).
pub fn select_device_auto(spec: &str) -> Result<Device> {
    check_device_name(spec)?;
    match spec.trim() {
        "auto" => select_device(None),
        s => select_device(Some(s)),
    }
}

/// The floating-point type for `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim() {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        o => Err(Error::invalid(
            "dtype",
            format!("{o:?} is not one of f32, bf16, f16"),
        )),
    }
}

/// `cpu` or `cuda:N`, for logs and benchmark tables.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_requests_are_served_or_refused_clearly() {
        assert!(matches!(select_device(Some("cpu")).unwrap(), Device::Cpu));
        for bad in ["gpu", "cuda:x", "cuda:-1", "CPU0"] {
            let e = select_device(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        if !cfg!(feature = "cuda") {
            let e = select_device(Some("cuda:0")).unwrap_err().to_string();
            assert!(e.contains("no CUDA support"), "{e}");
            assert!(matches!(select_device(None).unwrap(), Device::Cpu));
        }
    }

    #[test]
    fn dtypes_parse() {
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert_eq!(parse_dtype("f32").unwrap(), DType::F32);
        assert!(parse_dtype("fp8").unwrap_err().to_string().contains("fp8"));
    }
}
