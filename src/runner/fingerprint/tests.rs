use super::*;

/// Two H100s as `nvidia-smi --query-gpu=<NVIDIA_FIELDS> --format=csv,noheader,nounits`
/// prints them (the second without application clocks or ECC).
const NVIDIA_TWO: &str = "\
0, GPU-5e1c0a4e-2f7b-9d3c-81aa-0123456789ab, NVIDIA H100 80GB HBM3, 550.54.15, 1980, 2619, 1980, 2619, 700.00, 34, Enabled, Disabled
1, GPU-77777777-2f7b-9d3c-81aa-0123456789ab, NVIDIA H100 80GB HBM3, 550.54.15, [N/A], [Not Supported], 345, 2619, 700.00, 31, [N/A], [N/A]
";

fn dev(visible: &str) -> Device {
    Device { visible: visible.into() }
}

#[test]
fn nvidia_query_picks_the_visible_gpu() {
    let f = parse_nvidia_query(NVIDIA_TWO, &dev("")).expect("row");
    assert_eq!(f.gpu_uuid, "GPU-5e1c0a4e-2f7b-9d3c-81aa-0123456789ab");
    assert_eq!(f.gpu_model, "NVIDIA H100 80GB HBM3");
    assert_eq!(f.driver_version, "550.54.15");
    assert_eq!((f.app_clock_graphics_mhz.as_str(), f.app_clock_memory_mhz.as_str()), ("1980", "2619"));
    assert_eq!((f.clock_graphics_mhz.as_str(), f.clock_memory_mhz.as_str()), ("1980", "2619"));
    assert_eq!(f.power_limit_w, "700.00");
    assert_eq!(f.temperature_before_c, "34");
    assert_eq!((f.ecc_mode.as_str(), f.mig_mode.as_str()), ("Enabled", "Disabled"));
    // By index and by UUID; "no value" spellings are empty.
    for v in ["1", "GPU-77777777-2f7b-9d3c-81aa-0123456789ab"] {
        let f = parse_nvidia_query(NVIDIA_TWO, &dev(v)).expect("row");
        assert_eq!(f.temperature_before_c, "31");
        assert_eq!(f.app_clock_graphics_mhz, "");
        assert_eq!(f.app_clock_memory_mhz, "");
        assert_eq!((f.ecc_mode.as_str(), f.mig_mode.as_str()), ("", ""));
        assert_eq!(f.clock_graphics_mhz, "345");
    }
    // A visible device nvidia-smi does not list: nothing rather than another GPU's data.
    assert_eq!(parse_nvidia_query(NVIDIA_TWO, &dev("5")), None);
}

#[test]
fn nvidia_garbage_and_empty_give_nothing() {
    assert_eq!(parse_nvidia_query("", &dev("")), None);
    assert_eq!(parse_nvidia_query("Field \"clocks.foo\" is not a valid field to query.\n", &dev("")), None);
    assert_eq!(parse_nvidia_query("1, 2, 3\n", &dev("")), None);
    assert_eq!(parse_nvidia_temperature("garbage", &dev("")), None);
    assert_eq!(parse_nvidia_temperature("0, GPU-1, [N/A]\n", &dev("")), None);
    assert_eq!(parse_nvidia_temperature("0, GPU-1, 55\n", &dev("")).as_deref(), Some("55"));
    let f = parse_nvidia_fallback("0, GPU-1, Tesla T4, 470.1, 40\n", &dev("")).expect("row");
    assert_eq!((f.gpu_uuid.as_str(), f.temperature_before_c.as_str()), ("GPU-1", "40"));
}

#[test]
fn cuda_version_from_the_banner_or_the_query() {
    let banner = "| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |\n";
    assert_eq!(parse_cuda_version(banner).as_deref(), Some("12.4"));
    let q = "==============NVSMI LOG==============\n\nTimestamp : Thu\nDriver Version                            : 550.54.15\nCUDA Version                              : 12.4\n";
    assert_eq!(parse_cuda_version(q).as_deref(), Some("12.4"));
    assert_eq!(parse_cuda_version("CUDA Version : N/A\n"), None);
    assert_eq!(parse_cuda_version(""), None);
}

const ROCM: &str = r#"{
  "card0": {"Card Series": "AMD Instinct MI300X", "Unique ID": "0x18f68e602b8a790f",
            "sclk clock speed:": "(2100Mhz)", "mclk clock speed:": "(1300Mhz)",
            "Temperature (Sensor edge) (C)": "N/A", "Temperature (Sensor junction) (C)": "41.0",
            "Max Graphics Package Power (W)": "750.0"},
  "card1": {"Card Series": "AMD Instinct MI300X", "Unique ID": "0x2", "Temperature (Sensor edge) (C)": "38.0"},
  "system": {"Driver version": "6.7.0"}
}"#;

#[test]
fn rocm_json_gives_the_card_in_use() {
    let f = parse_rocm(ROCM, &dev("")).expect("card");
    assert_eq!(f.gpu_model, "AMD Instinct MI300X");
    assert_eq!(f.gpu_uuid, "0x18f68e602b8a790f");
    assert_eq!(f.driver_version, "6.7.0");
    assert_eq!((f.clock_graphics_mhz.as_str(), f.clock_memory_mhz.as_str()), ("2100", "1300"));
    assert_eq!(f.power_limit_w, "750.0");
    assert_eq!(f.temperature_before_c, "41.0", "junction when the edge sensor has no value");
    let f = parse_rocm(ROCM, &dev("1")).expect("card");
    assert_eq!((f.gpu_uuid.as_str(), f.temperature_before_c.as_str()), ("0x2", "38.0"));
    assert_eq!(parse_rocm_temperature(ROCM, &dev("1")).as_deref(), Some("38.0"));
    assert_eq!(parse_rocm(ROCM, &dev("7")), None);
    for bad in ["", "not json", "{}", "[1,2]", r#"{"system": {}}"#] {
        assert_eq!(parse_rocm(bad, &dev("")), None, "{bad}");
    }
}

#[test]
fn device_and_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    };
    assert_eq!(Device::from_lookup(env(&[("CUDA_VISIBLE_DEVICES", " 2,3")])), dev("2"));
    assert_eq!(Device::from_lookup(env(&[("HIP_VISIBLE_DEVICES", "1")])), dev("1"));
    assert_eq!(Device::from_lookup(env(&[])), dev(""));
    let mut f = Fingerprint::default();
    let vars = &[
        ("BENCHKITE_IMAGE_DIGEST", "sha256:abc"),
        ("BENCHKITE_NODE_NAME", "gpu-node-1"),
        ("BENCHKITE_CERTIFICATION_EPOCH", "7"),
        ("KERNELBOT_GPU_INDEX", "3"),
    ];
    from_env(&mut f, env(vars), &dev("0"));
    assert_eq!(
        (f.image_digest.as_str(), f.node.as_str(), f.certification_epoch.as_str(), f.slot.as_str()),
        ("sha256:abc", "gpu-node-1", "7", "3")
    );
    let mut f = Fingerprint::default();
    from_env(&mut f, env(&[]), &dev("GPU-9"));
    assert_eq!(f.slot, "GPU-9", "the visible device when no slot index is set");
    assert!(f.image_digest.is_empty() && f.node.is_empty());
    assert_eq!(harness_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
