//! Profile mode: the vendor profiler wrapped around the harness (Nsight Systems or Nsight
//! Compute on CUDA, rocprofv3 on ROCm) and its output zipped into `ProfileResult.trace`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use flate2::Compression;
use flate2::write::DeflateEncoder;

use super::process;

/// Largest zip we embed in result.json as base64; bigger traces are left out.
pub const MAX_TRACE_ZIP_BYTES: usize = 16 * 1024 * 1024;

/// A profiler the runner knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profiler {
    /// NVIDIA Nsight Systems (`nsys profile`).
    Nsys,
    /// NVIDIA Nsight Compute (`ncu`).
    Ncu,
    /// AMD rocprofv3.
    Rocprof,
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

    /// `ProfileResult.profiler`.
    pub fn label(self) -> &'static str {
        match self {
            Profiler::Nsys => "nsight-systems",
            Profiler::Ncu => "nsight-compute",
            Profiler::Rocprof => "rocPROF",
        }
    }

    /// The profiler's arguments before the profiled command, writing into `out_dir`.
    pub fn args(self, path: &Path, out_dir: &Path) -> Vec<String> {
        let mut a = vec![path.to_string_lossy().into_owned()];
        let out = out_dir.to_string_lossy().into_owned();
        match self {
            Profiler::Nsys => a.extend(
                [
                    "profile",
                    "--force-overwrite",
                    "true",
                    "--trace",
                    "cuda,nvtx,osrt",
                    "--output",
                    &format!("{out}/profile"),
                ]
                .map(String::from),
            ),
            Profiler::Ncu => a.extend(
                ["--set", "full", "--force-overwrite", "--export", &format!("{out}/profile")].map(String::from),
            ),
            Profiler::Rocprof => a.extend(
                [
                    "--log-level",
                    "fatal",
                    "--hip-trace",
                    "--kernel-trace",
                    "--rccl-trace",
                    "--marker-trace",
                    "--memory-copy-trace",
                    "--scratch-memory-trace",
                    "--output-format",
                    "pftrace",
                    "csv",
                    "-d",
                    &out,
                    "-o",
                    &format!("{out}/%pid%"),
                    "--",
                ]
                .map(String::from),
            ),
        }
        a
    }
}

/// Picks the profiler: the requested one, else by runtime (ROCm → rocprofv3; CUDA → nsys,
/// then ncu), else whichever is installed. The error says what was looked for.
pub(crate) fn select(requested: Option<Profiler>, runtime: &str) -> Result<(Profiler, PathBuf), String> {
    let found = |p: Profiler| process::which(p.program()).map(|path| (p, path));
    if let Some(p) = requested {
        return found(p).ok_or_else(|| format!("profile mode: {} not found on PATH", p.program()));
    }
    let order: &[Profiler] = match runtime {
        "ROCm" => &[Profiler::Rocprof],
        "CUDA" => &[Profiler::Nsys, Profiler::Ncu],
        _ => &[Profiler::Nsys, Profiler::Ncu, Profiler::Rocprof],
    };
    order.iter().find_map(|p| found(*p)).ok_or_else(|| {
        let names: Vec<&str> = order.iter().map(|p| p.program()).collect();
        let rt = if runtime.is_empty() { "no GPU runtime detected" } else { runtime };
        format!("profile mode needs a vendor profiler ({rt}): none of {} found on PATH", names.join(", "))
    })
}

/// Zips every file under `dir` (entries named `<prefix>/<relative path>`), deflated.
pub(crate) fn zip_dir(dir: &Path, prefix: &str) -> std::io::Result<Vec<u8>> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut zip = ZipWriter::default();
    for (rel, abs) in files {
        let data = std::fs::read(&abs)?;
        zip.add(&format!("{prefix}/{rel}"), &data)?;
    }
    zip.finish()
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            collect_files(root, &path, out)?;
        } else if ty.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((rel, path));
        }
    }
    Ok(())
}

/// `ProfileResult.trace`: base64 of the zip, or empty when it is over the limit.
pub(crate) fn trace_of(dir: &Path) -> (String, Option<String>) {
    match zip_dir(dir, "profile_data") {
        Ok(z) if z.len() <= MAX_TRACE_ZIP_BYTES => (base64::engine::general_purpose::STANDARD.encode(z), None),
        Ok(z) => (
            String::new(),
            Some(format!("profile trace is {} bytes zipped, over the {MAX_TRACE_ZIP_BYTES}-byte limit", z.len())),
        ),
        Err(e) => (String::new(), Some(format!("zipping the profile output failed: {e}"))),
    }
}

/// A minimal zip writer: deflated entries, no zip64 (the trace is capped far below 4 GiB).
#[derive(Default)]
struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
}

impl ZipWriter {
    fn add(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let too_big = || std::io::Error::other("zip entry or archive over 4 GiB");
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data)?;
        let compressed = enc.finish()?;
        let (method, body): (u16, &[u8]) = if compressed.len() < data.len() { (8, &compressed) } else { (0, data) };
        let offset = u32::try_from(self.out.len()).map_err(|_| too_big())?;
        let csize = u32::try_from(body.len()).map_err(|_| too_big())?;
        let usize_ = u32::try_from(data.len()).map_err(|_| too_big())?;
        let name_len = u16::try_from(name.len()).map_err(|_| too_big())?;
        // DOS date 1980-01-01 00:00 (reproducible archives).
        let (time, date) = (0u16, (1u16 << 5) | 1);
        let flags = 0x0800u16; // UTF-8 names

        let o = &mut self.out;
        o.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for v in [20u16, flags, method, time, date] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc.sum(), csize, usize_] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o.extend_from_slice(&name_len.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(body);

        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        // Made by Unix (3), version 2.0; needed 2.0.
        for v in [(3u16 << 8) | 20, 20, flags, method, time, date] {
            c.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc.sum(), csize, usize_] {
            c.extend_from_slice(&v.to_le_bytes());
        }
        for v in [name_len, 0, 0, 0, 0] {
            c.extend_from_slice(&v.to_le_bytes());
        }
        // External attributes: a regular file, rw-r--r--.
        c.extend_from_slice(&((0o100_644u32) << 16).to_le_bytes());
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        self.entries = self.entries.checked_add(1).ok_or_else(too_big)?;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let too_big = || std::io::Error::other("zip archive over 4 GiB");
        let cd_offset = u32::try_from(self.out.len()).map_err(|_| too_big())?;
        let cd_size = u32::try_from(self.central.len()).map_err(|_| too_big())?;
        self.out.extend_from_slice(&self.central);
        self.out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        for v in [0u16, 0, self.entries, self.entries] {
            self.out.extend_from_slice(&v.to_le_bytes());
        }
        self.out.extend_from_slice(&cd_size.to_le_bytes());
        self.out.extend_from_slice(&cd_offset.to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes());
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_is_readable_by_python() {
        let dir = std::env::temp_dir().join(format!("bk-zip-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), "hello hello hello hello hello\n").unwrap();
        std::fs::write(dir.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
        let z = zip_dir(&dir, "profile_data").unwrap();
        let zpath = dir.with_extension("zip");
        std::fs::write(&zpath, &z).unwrap();
        let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\n\
                      print(sorted((i.filename, z.read(i).hex()) for i in z.infolist()))";
        let out = std::process::Command::new("python3").args(["-c", script]).arg(&zpath).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("('profile_data/a.txt', '68656c6c6f"), "{text}");
        assert!(text.contains("('profile_data/sub/b.bin', '000102ff')"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&zpath).unwrap();
    }

    #[test]
    fn missing_profiler_is_a_clear_error() {
        let e = select(Some(Profiler::Nsys), "CUDA");
        if process::which("nsys").is_none() {
            assert!(e.unwrap_err().contains("nsys not found"));
        }
        if ["nsys", "ncu", "rocprofv3"].iter().all(|p| process::which(p).is_none()) {
            let e = select(None, "").unwrap_err();
            assert!(e.contains("none of nsys, ncu, rocprofv3"), "{e}");
        }
    }
}
