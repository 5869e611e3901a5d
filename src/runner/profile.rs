//! Profile mode, as kernelbot's runner does it (`profile_program` in
//! `src/libkernelbot/run_eval.py`): Nsight Compute (`ncu`) on CUDA, rocprofv3 on ROCm, any
//! other runtime refused (`ValueError: Unknown runtime`). ncu is limited to the harness's
//! `custom_kernel/` NVTX range and 10 kernels, and its speed-of-light summary goes into the
//! run's results as `benchmark.0.report` (base64), which kernelbot's report code reads.
//! The profiler's output directory is zipped into `ProfileResult.trace` with the same layout
//! as Python's `shutil.make_archive(..., "zip", output_dir)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::cases::{is_python_space, python_splitlines};
use super::process::{self, Ending, Spec};

mod trace;

pub(crate) use trace::trace_of;

/// Largest zip we embed in result.json as base64; bigger traces are left out.
pub const MAX_TRACE_ZIP_BYTES: usize = 16 * 1024 * 1024;

/// Name of the directory the profiler writes into (kernelbot's `profile_data`).
pub const OUTPUT_DIR: &str = "profile_data";

/// The ncu report file kernelbot names (`-o .../profile.ncu-rep`).
pub const NCU_REPORT_FILE: &str = "profile.ncu-rep";

/// kernelbot's ncu summary: these tables of the speed-of-light section.
pub const NCU_REPORT_TABLES: &[&str] =
    &["GPU Throughput", "Pipe Utilization (% of active cycles)", "Warp State (All Cycles)"];

/// Key of the ncu summary in the run's results (each profile run has one benchmark).
pub const NCU_REPORT_KEY: &str = "benchmark.0.report";

/// How long `ncu --import ... --print-details body` may take (kernelbot waits without a
/// limit; a hung import must not hold the GPU).
const NCU_IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

/// A profiler the runner knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profiler {
    /// NVIDIA Nsight Compute (`ncu`): kernelbot's profiler on CUDA, and the default there.
    Ncu,
    /// AMD rocprofv3: kernelbot's profiler on ROCm, and the default there.
    Rocprof,
    /// NVIDIA Nsight Systems (`nsys profile`): only when asked for; kernelbot never uses it,
    /// so its results carry no `benchmark.0.report`.
    Nsys,
}

/// The profiler a profile run uses, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selected {
    pub profiler: Profiler,
    pub path: PathBuf,
}

impl Profiler {
    /// The executable.
    pub fn program(self) -> &'static str {
        match self {
            Profiler::Nsys => "nsys",
            Profiler::Ncu => "ncu",
            Profiler::Rocprof => "rocprofv3",
        }
    }

    /// `ProfileResult.profiler`, as kernelbot spells it.
    pub fn label(self) -> &'static str {
        match self {
            // Not one of kernelbot's: benchkite's own spelling.
            Profiler::Nsys => "nsight-systems",
            Profiler::Ncu => "Nsight-Compute",
            Profiler::Rocprof => "rocPROF",
        }
    }

    /// The profiler's command line before the profiled command (program first), writing
    /// into `out_dir`: kernelbot's `profile_program_ncu` / `profile_program_roc` argument
    /// for argument.
    pub fn args(self, path: &Path, out_dir: &Path) -> Vec<String> {
        let mut a = vec![path.to_string_lossy().into_owned()];
        let out = out_dir.to_string_lossy().into_owned();
        let strs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            Profiler::Ncu => {
                a.extend(strs(&[
                    "--set",
                    "full",
                    "--nvtx",
                    "--nvtx-include",
                    "custom_kernel/",
                    "--import-source",
                    "1",
                    "-c",
                    "10",
                    "-o",
                ]));
                a.push(out_dir.join(NCU_REPORT_FILE).to_string_lossy().into_owned());
                a.push("--".to_owned());
            }
            Profiler::Rocprof => {
                a.extend(strs(&[
                    "--log-level",
                    "fatal",
                    "--hip-trace",
                    "--kernel-trace",
                    "--rccl-trace",
                    "--marker-trace",
                    "--hip-trace",
                    "--memory-copy-trace",
                    "--scratch-memory-trace",
                    "--output-format",
                    "pftrace",
                    "csv",
                    "-d",
                ]));
                a.push(out);
                a.extend(strs(&["-o", "%pid%", "--"]));
            }
            Profiler::Nsys => {
                a.extend(strs(&["profile", "--force-overwrite", "true", "--trace", "cuda,nvtx,osrt", "--output"]));
                a.push(format!("{out}/profile"));
            }
        }
        a
    }

    /// Extra environment of the profiled run (kernelbot's `extra_env`).
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Profiler::Ncu => &[("POPCORN_NCU", "1")],
            Profiler::Rocprof => &[("GPU_DUMP_CODE_OBJECT", "1")],
            Profiler::Nsys => &[],
        }
    }

    /// What kernelbot does after the profiled run: ncu's summary into `result` (whatever the
    /// run's outcome; nothing when the import fails); rocprofv3's per-process traces merged
    /// into `combined.pftrace` and the dumped code objects moved beside them. Returns notes
    /// for the job log.
    pub(crate) fn after_run(
        self,
        path: &Path,
        out_dir: &Path,
        workdir: &Path,
        result: &mut BTreeMap<String, String>,
        confine: &dyn Fn(&mut Spec),
    ) -> Vec<String> {
        let mut notes = Vec::new();
        match self {
            Profiler::Ncu => match ncu_summary(path, out_dir, confine) {
                Ok(report) => {
                    result.insert(
                        NCU_REPORT_KEY.to_owned(),
                        base64::engine::general_purpose::STANDARD.encode(report.as_bytes()),
                    );
                }
                Err(e) => notes.push(format!("no ncu summary ({NCU_REPORT_KEY}): {e}")),
            },
            Profiler::Rocprof => {
                if let Err(e) = merge_rocprof_output(out_dir, workdir) {
                    notes.push(format!("post-processing the rocprofv3 output failed: {e}"));
                }
            }
            Profiler::Nsys => {}
        }
        notes
    }
}

/// Picks the profiler the way kernelbot does: by the runtime (`CUDA` → ncu, `ROCm` →
/// rocprofv3), refusing any other runtime (kernelbot raises `ValueError(f"Unknown runtime
/// {runtime}")`, so a machine without a GPU fails profile mode as an infrastructure
/// failure); an explicit `--profiler` overrides it. The profiler must be on PATH (kernelbot
/// would fail to start it).
pub(crate) fn select(requested: Option<Profiler>, runtime: &str) -> Result<Selected, String> {
    let profiler = match (requested, runtime) {
        (Some(p), _) => p,
        (None, "CUDA") => Profiler::Ncu,
        (None, "ROCm") => Profiler::Rocprof,
        (None, other) => {
            return Err(format!(
                "Unknown runtime {other:?}: profile mode needs a CUDA (ncu) or ROCm (rocprofv3) GPU and none was \
                 detected (kernelbot's runner fails the same way); --profiler / BENCHKITE_PROFILER picks one explicitly"
            ));
        }
    };
    let path = process::which(profiler.program())
        .ok_or_else(|| format!("profile mode: {} not found on PATH", profiler.program()))?;
    Ok(Selected { profiler, path })
}

/// `ncu --import <out_dir>/profile.ncu-rep --print-details body`, filtered like kernelbot.
///
/// `confine` sets its environment and sandbox: the report was written by the sandboxed run,
/// and ncu parses it as whoever runs it.
fn ncu_summary(ncu: &Path, out_dir: &Path, confine: &dyn Fn(&mut Spec)) -> Result<String, String> {
    let mut spec = Spec::new(ncu).args([
        "--import".into(),
        out_dir.join(NCU_REPORT_FILE).into_os_string(),
        "--print-details".into(),
        "body".into(),
    ]);
    spec.timeout = Some(NCU_IMPORT_TIMEOUT);
    confine(&mut spec);
    let out = process::run(&spec).map_err(|e| e.to_string())?;
    if out.ending != Ending::Exited(0) {
        return Err(format!("ncu --import ended with {:?}: {}", out.ending, out.stderr.to_output().trim_end()));
    }
    Ok(filter_ncu_report(&String::from_utf8_lossy(&out.stdout.bytes), NCU_REPORT_TABLES))
}

/// kernelbot's `_filter_ncu_report`, line for line: the header line of each of the first two
/// kernels with the chosen tables of its details, a note when more kernels follow, at most
/// 100 table lines.
pub(crate) fn filter_ncu_report(report: &str, tables: &[&str]) -> String {
    const TABLE: &str = "Table Name :";
    let mut result = String::new();
    let mut n_kernels = 0;
    let mut collect = false;
    let mut length = 0;
    for line in python_splitlines(report) {
        let chars: Vec<char> = line.chars().take(3).collect();
        if chars.len() >= 3 && chars[1] == ' ' && chars[2] != ' ' {
            if n_kernels != 0 {
                result.push('\n');
            }
            n_kernels += 1;
            if n_kernels == 3 {
                result.push_str(
                    "\nAdditional kernel launches follow. Please check the .ncu-rep file for more details.\n",
                );
            }
            result.push_str(line);
            result.push('\n');
        }
        if n_kernels > 2 {
            continue;
        }
        if line.contains("Table Name : ") {
            let at = line.find(TABLE).map_or(line.len(), |i| i + TABLE.len());
            let table = line[at..].trim_matches(is_python_space);
            collect = tables.contains(&table);
            if collect {
                result.push('\n');
            }
        }
        if line.trim_matches(is_python_space).is_empty() {
            collect = false;
        }
        if collect {
            result.push_str(line);
            result.push('\n');
            length += 1;
            if length > 100 {
                result
                    .push_str("\n[...]\nReport has been truncated. Please check the .ncu-rep file for more details.\n");
                break;
            }
        }
    }
    result
}

/// kernelbot's rocprofv3 post-processing: every `*.pftrace` concatenated into
/// `combined.pftrace` (then removed), and the `_code_object*.o` files the run dumped into the
/// working directory moved into the output directory.
fn merge_rocprof_output(out_dir: &Path, workdir: &Path) -> std::io::Result<()> {
    let mut traces: Vec<PathBuf> = std::fs::read_dir(out_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pftrace") && p.is_file())
        .collect();
    traces.sort();
    let mut combined = std::fs::File::create(out_dir.join("combined.pftrace"))?;
    for t in &traces {
        std::io::copy(&mut std::fs::File::open(t)?, &mut combined)?;
        std::fs::remove_file(t)?;
    }
    for entry in std::fs::read_dir(workdir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.starts_with("_code_object") && name.ends_with(".o") {
            std::fs::rename(&path, out_dir.join(&name))?;
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::trace::zip_dir;
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bk-profile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn python(script: &str, args: &[&Path]) -> String {
        let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn zip_has_the_layout_of_pythons_make_archive() {
        let root = scratch("zip");
        let dir = root.join(OUTPUT_DIR);
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::fs::write(dir.join("profile.ncu-rep"), "hello hello hello hello hello\n").unwrap();
        std::fs::write(dir.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
        std::fs::write(dir.join("sub/deeper/c.csv"), "x,y\n").unwrap();
        let ours = root.join("ours.zip");
        std::fs::write(&ours, zip_dir(&dir).unwrap()).unwrap();
        // What kernelbot's `_directory_to_zip_bytes` makes of the same directory.
        let theirs = root.join("theirs");
        python("import shutil, sys\nshutil.make_archive(sys.argv[1], 'zip', sys.argv[2])", &[&theirs, &dir]);
        let list = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\n\
                    for i in z.infolist(): print(i.filename, oct(i.external_attr >> 16), z.read(i).hex())";
        let ours_list = python(list, &[&ours]);
        let theirs_list = python(list, &[&theirs.with_extension("zip")]);
        assert_eq!(ours_list, theirs_list);
        assert!(ours_list.starts_with("sub/ 0o40755 \nprofile.ncu-rep 0o100644 68656c6c6f"), "{ours_list}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn command_lines_are_kernelbots() {
        let out = Path::new("/w/profile.0/profile_data");
        assert_eq!(
            Profiler::Ncu.args(Path::new("/usr/bin/ncu"), out),
            [
                "/usr/bin/ncu",
                "--set",
                "full",
                "--nvtx",
                "--nvtx-include",
                "custom_kernel/",
                "--import-source",
                "1",
                "-c",
                "10",
                "-o",
                "/w/profile.0/profile_data/profile.ncu-rep",
                "--"
            ]
        );
        assert_eq!(Profiler::Ncu.env(), [("POPCORN_NCU", "1")]);
        assert_eq!(
            Profiler::Rocprof.args(Path::new("rocprofv3"), out),
            [
                "rocprofv3",
                "--log-level",
                "fatal",
                "--hip-trace",
                "--kernel-trace",
                "--rccl-trace",
                "--marker-trace",
                "--hip-trace",
                "--memory-copy-trace",
                "--scratch-memory-trace",
                "--output-format",
                "pftrace",
                "csv",
                "-d",
                "/w/profile.0/profile_data",
                "-o",
                "%pid%",
                "--"
            ]
        );
        assert_eq!(Profiler::Rocprof.env(), [("GPU_DUMP_CODE_OBJECT", "1")]);
        assert_eq!((Profiler::Ncu.label(), Profiler::Rocprof.label()), ("Nsight-Compute", "rocPROF"));
    }

    #[test]
    fn the_runtime_picks_the_profiler_and_no_runtime_fails_like_kernelbot() {
        let e = select(None, "").unwrap_err();
        assert!(e.starts_with("Unknown runtime \"\""), "{e}");
        let e = select(None, "Metal").unwrap_err();
        assert!(e.starts_with("Unknown runtime \"Metal\""), "{e}");
        for (runtime, program) in [("CUDA", "ncu"), ("ROCm", "rocprofv3")] {
            match select(None, runtime) {
                Ok(s) => assert_eq!(s.profiler.program(), program),
                Err(e) => assert_eq!(e, format!("profile mode: {program} not found on PATH")),
            }
        }
        // An explicit profiler is used whatever the runtime, when it is installed.
        if process::which("nsys").is_none() {
            assert_eq!(select(Some(Profiler::Nsys), "").unwrap_err(), "profile mode: nsys not found on PATH");
        }
    }

    /// A stand-in `ncu` that prints `report` for `--import <file> --print-details body` when
    /// the file exists, and fails otherwise.
    fn fake_ncu(dir: &Path, report: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(dir.join("report.txt"), report).unwrap();
        let p = dir.join("ncu");
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = --import ] && [ \"$3 $4\" = '--print-details body' ] && [ -f \"$2\" ] || exit 1\ncat '{}'\n",
            dir.join("report.txt").display()
        );
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn ncu_summary_goes_into_benchmark_0_report() {
        let root = scratch("ncu");
        let out = root.join(OUTPUT_DIR);
        std::fs::create_dir_all(&out).unwrap();
        let report = "  k(int) (1, 1, 1)x(32, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n    Section: GPU Speed Of Light Throughput\n    Table Name : GPU Throughput\n    Memory Throughput   %   1.2\n\n    Table Name : Other\n    Ignored   1\n";
        let ncu = fake_ncu(&root, report);
        // No report file (the run failed before ncu wrote one): no key, a note.
        let mut result = BTreeMap::new();
        let notes = Profiler::Ncu.after_run(&ncu, &out, &root, &mut result, &|_| {});
        assert!(result.is_empty() && notes.len() == 1, "{result:?} {notes:?}");
        std::fs::write(out.join(NCU_REPORT_FILE), "rep").unwrap();
        let notes = Profiler::Ncu.after_run(&ncu, &out, &root, &mut result, &|_| {});
        assert!(notes.is_empty(), "{notes:?}");
        let decoded = base64::engine::general_purpose::STANDARD.decode(&result[NCU_REPORT_KEY]).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), filter_ncu_report(report, NCU_REPORT_TABLES));
        assert_eq!(
            filter_ncu_report(report, NCU_REPORT_TABLES),
            "  k(int) (1, 1, 1)x(32, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n\n    Table Name : GPU Throughput\n    Memory Throughput   %   1.2\n"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn ncu_filter_matches_kernelbots_on_its_golden() {
        // Input and output of kernelbot's own `_filter_ncu_report` (tests/kernelbot/generate.py).
        // Four kernels (only two are summarised), tables chosen and skipped, a non-ASCII name.
        let input = include_str!("../../tests/kernelbot/ncu_report.txt");
        let want = include_str!("../../tests/kernelbot/ncu_report.filtered.txt");
        assert_eq!(filter_ncu_report(input, NCU_REPORT_TABLES), want);
        assert!(want.contains("Additional kernel launches follow."));
        // A table over 100 lines: cut with kernelbot's note.
        let input = include_str!("../../tests/kernelbot/ncu_report_long.txt");
        let want = include_str!("../../tests/kernelbot/ncu_report_long.filtered.txt");
        assert_eq!(filter_ncu_report(input, NCU_REPORT_TABLES), want);
        assert!(want.ends_with("Report has been truncated. Please check the .ncu-rep file for more details.\n"));
    }

    #[test]
    fn rocprof_traces_are_merged_and_code_objects_moved() {
        let root = scratch("roc");
        let out = root.join(OUTPUT_DIR);
        let work = root.join("work");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(out.join("12_results.pftrace"), "A").unwrap();
        std::fs::write(out.join("34_results.pftrace"), "B").unwrap();
        std::fs::write(out.join("12_kernel_trace.csv"), "k").unwrap();
        std::fs::write(work.join("_code_object0001.o"), "o").unwrap();
        std::fs::write(work.join("submission.py"), "s").unwrap();
        let notes = Profiler::Rocprof.after_run(Path::new("rocprofv3"), &out, &work, &mut BTreeMap::new(), &|_| {});
        assert!(notes.is_empty(), "{notes:?}");
        let mut names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["12_kernel_trace.csv", "_code_object0001.o", "combined.pftrace"]);
        assert_eq!(std::fs::read_to_string(out.join("combined.pftrace")).unwrap(), "AB");
        assert!(work.join("submission.py").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
