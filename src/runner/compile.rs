//! The `cu` compile step: find nvcc, build its command line from the config (the seeds'
//! flags, then the config's flags, include dirs, libraries, defines, the sources, and
//! `-gencode` for `arch` or `-arch=native`), run it under a timeout and record a
//! [`CompileResult`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::cases::python_str;
use super::process::{self, Ending, Spec};
use crate::contract::{CompileResult, EvalConfig, exit_code};

/// nvcc flags every compile gets (the seeds' platform's `CUDA_FLAGS`).
pub const CUDA_FLAGS: &[&str] = &[
    "--std=c++20",
    "-DNDEBUG",
    "-Xcompiler=-Wno-psabi",
    "-Xcompiler=-fno-strict-aliasing",
    "--expt-extended-lambda",
    "--expt-relaxed-constexpr",
    "-forward-unknown-to-host-compiler",
    "-O3",
    "-Xnvlink=--verbose",
    "-Xptxas=--verbose",
    "-Xptxas=--warn-on-spills",
];

/// Name of the binary nvcc produces (in the working directory).
pub const OUTPUT_BINARY: &str = "eval.out";

/// Exit code recorded when nvcc could not be found or started (as a shell would report).
pub const NOT_FOUND_EXIT_CODE: i64 = 127;

/// Where nvcc is: the explicit path, else PATH, else `$CUDA_HOME/bin`, `$CUDA_PATH/bin`,
/// `/usr/local/cuda/bin`.
pub(crate) fn find_nvcc(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if process::is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(format!("nvcc not found at {} (--nvcc / BENCHKITE_NVCC)", p.display()))
        };
    }
    if let Some(p) = process::which("nvcc") {
        return Ok(p);
    }
    let mut looked = vec!["PATH".to_owned()];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var).filter(|h| !h.is_empty()) {
            let p = Path::new(&home).join("bin/nvcc");
            if process::is_executable(&p) {
                return Ok(p);
            }
            looked.push(p.display().to_string());
        }
    }
    let p = Path::new("/usr/local/cuda/bin/nvcc");
    if process::is_executable(p) {
        return Ok(p.to_owned());
    }
    looked.push(p.display().to_string());
    Err(format!("nvcc not found (looked in {})", looked.join(", ")))
}

/// The nvcc arguments for `config` (without the nvcc path), checked the way the seeds'
/// runner checks them: defines must be identifiers, flags must start with `-`, include
/// directories must exist (relative ones are taken from `workdir`).
pub(crate) fn nvcc_args(config: &EvalConfig, workdir: &Path) -> Result<Vec<String>, String> {
    let mut flags: Vec<String> = CUDA_FLAGS.iter().map(|s| (*s).to_owned()).collect();
    flags.extend(config.compile_flags.iter().flatten().cloned());
    for dir in config.include_dirs.iter().flatten() {
        let p = workdir.join(dir);
        if !p.exists() {
            return Err(format!("include directory `{dir}` does not exist"));
        }
        if !p.is_dir() {
            return Err(format!("include directory `{dir}` is not a directory"));
        }
        flags.push(format!("-I{dir}"));
    }
    flags.extend(config.libraries.iter().flatten().map(|l| format!("-l{l}")));
    for (name, value) in config.defines.iter().flatten() {
        if !is_identifier(name) {
            return Err(format!("define `{name}` is not a valid macro name"));
        }
        match value {
            Value::Null => flags.push(format!("-D{name}")),
            v => flags.push(format!("-D{name}={}", python_str(v))),
        }
    }
    if let Some(bad) = flags.iter().find(|f| !f.starts_with('-')) {
        return Err(format!("compiler flag `{bad}` does not start with a dash"));
    }
    let mut args = flags;
    args.extend(config.sources.keys().cloned());
    args.push(match &config.arch {
        Some(arch) => format!("-gencode=arch=compute_{0},code=sm_{0}", arch.sm()),
        None => "-arch=native".to_owned(),
    });
    args.push("-o".to_owned());
    args.push(OUTPUT_BINARY.to_owned());
    Ok(args)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `nvcc --version`, or empty when it fails.
pub(crate) fn nvcc_version(nvcc: &Path) -> String {
    let mut spec = Spec::new(nvcc).args(["--version"]);
    spec.timeout = Some(Duration::from_secs(30));
    match process::run(&spec) {
        Ok(out) if out.ending == Ending::Exited(0) => String::from_utf8_lossy(&out.stdout.bytes).into_owned(),
        _ => String::new(),
    }
}

/// The compile result when nvcc is missing: says so, with the command that would have run.
pub(crate) fn not_found_result(command: &str, why: &str) -> CompileResult {
    CompileResult {
        nvcc_found: false,
        nvcc_version: String::new(),
        success: false,
        command: command.to_owned(),
        stdout: String::new(),
        stderr: why.to_owned(),
        exit_code: NOT_FOUND_EXIT_CODE,
    }
}

/// Runs nvcc in `workdir` with `args` under `timeout`; `confine` sets its environment and
/// sandbox.
pub(crate) fn compile(
    nvcc: &Path,
    args: &[String],
    workdir: &Path,
    timeout: Duration,
    confine: &dyn Fn(&mut Spec),
) -> CompileResult {
    let nvcc_str = nvcc.to_string_lossy().into_owned();
    let mut argv = vec![nvcc_str];
    argv.extend(args.iter().cloned());
    let command = process::shell_join(&argv);
    let version = nvcc_version(nvcc);
    let mut spec = Spec::new(nvcc).args(args.iter());
    spec.cwd = Some(workdir.to_owned());
    spec.timeout = Some(timeout);
    confine(&mut spec);
    match process::run(&spec) {
        Err(e) if e.is_not_found() => not_found_result(&command, &format!("starting nvcc failed: {e}")),
        Err(e) => CompileResult {
            nvcc_found: true,
            nvcc_version: version,
            success: false,
            command,
            stdout: String::new(),
            stderr: format!("running nvcc failed: {e}"),
            exit_code: -1,
        },
        Ok(out) => {
            let mut stderr = out.stderr.to_output();
            let code = match out.ending {
                Ending::TimedOut => {
                    stderr.push_str(&format!(
                        "\n[benchkite] compilation timed out after {} s and was killed\n",
                        timeout.as_secs()
                    ));
                    exit_code::TIMEOUT
                }
                Ending::Canceled(sig) => {
                    stderr.push_str(&format!("\n[benchkite] compilation canceled (signal {sig})\n"));
                    out.ending.python_returncode()
                }
                other => other.python_returncode(),
            };
            CompileResult {
                nvcc_found: true,
                nvcc_version: version,
                success: code == 0,
                command,
                stdout: out.stdout.to_output(),
                stderr: crate::contract::truncate_output(&stderr).into_owned(),
                exit_code: code,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Arch, Lang, Mode};
    use serde_json::json;

    fn config() -> EvalConfig {
        let mut c = EvalConfig::new(Lang::Cu, Mode::Test);
        c.sources.insert("eval.cu".into(), "x".into());
        c.sources.insert("submission.cu".into(), "y".into());
        c
    }

    #[test]
    fn command_line_follows_the_seeds_order() {
        let mut c = config();
        c.arch = Some(Arch::Name("90a".into()));
        c.compile_flags = Some(vec!["--use_fast_math".into()]);
        c.libraries = Some(vec!["cuda".into()]);
        c.include_dirs = Some(vec![".".into()]);
        c.defines = Some(json!({"N": 4, "FLAG": null, "NAME": "x"}).as_object().cloned().unwrap());
        let args = nvcc_args(&c, Path::new("/")).unwrap();
        let tail = &args[CUDA_FLAGS.len()..];
        assert_eq!(&args[..CUDA_FLAGS.len()], CUDA_FLAGS);
        assert_eq!(
            tail,
            [
                "--use_fast_math",
                "-I.",
                "-lcuda",
                "-DFLAG",
                "-DN=4",
                "-DNAME=x",
                "eval.cu",
                "submission.cu",
                "-gencode=arch=compute_90a,code=sm_90a",
                "-o",
                "eval.out"
            ]
        );
        c.arch = Some(Arch::Number(80));
        assert!(nvcc_args(&c, Path::new("/")).unwrap().contains(&"-gencode=arch=compute_80,code=sm_80".to_owned()));
        c.arch = None;
        assert!(nvcc_args(&c, Path::new("/")).unwrap().contains(&"-arch=native".to_owned()));
    }

    #[test]
    fn bad_defines_flags_and_dirs_are_refused() {
        let mut c = config();
        c.defines = Some(json!({"A B": 1}).as_object().cloned().unwrap());
        assert!(nvcc_args(&c, Path::new("/")).unwrap_err().contains("`A B`"));
        let mut c = config();
        c.compile_flags = Some(vec!["rm".into()]);
        assert!(nvcc_args(&c, Path::new("/")).unwrap_err().contains("does not start with a dash"));
        let mut c = config();
        c.include_dirs = Some(vec!["/nonexistent/benchkite".into()]);
        assert!(nvcc_args(&c, Path::new("/")).unwrap_err().contains("does not exist"));
    }

    #[test]
    fn identifiers() {
        for ok in ["A", "_x", "N_2"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "2x", "a-b", "a b", "é"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn explicit_missing_nvcc_is_an_error() {
        let e = find_nvcc(Some(Path::new("/nonexistent/nvcc"))).unwrap_err();
        assert!(e.contains("/nonexistent/nvcc"), "{e}");
    }
}
