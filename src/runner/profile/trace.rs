//! The profile trace: the profiler's output directory zipped with the layout of Python's
//! `shutil.make_archive`, base64-encoded into `ProfileResult.trace`.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use flate2::Compression;
use flate2::write::DeflateEncoder;

use super::MAX_TRACE_ZIP_BYTES;

/// Zips the contents of `dir` the way Python's `shutil.make_archive(base, "zip", dir)`
/// does for kernelbot: entries relative to `dir` itself (no leading directory), walked top
/// down as `os.walk` does, each directory's subdirectories first (as entries ending in `/`,
/// sorted), then its files (sorted here; `os.walk` gives them in directory order), then
/// its subdirectories' contents.
pub(crate) fn zip_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut zip = ZipWriter::default();
    add_tree(&mut zip, dir, "")?;
    zip.finish()
}

fn add_tree(zip: &mut ZipWriter, dir: &Path, rel: &str) -> std::io::Result<()> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            dirs.push(name);
        } else if ty.is_file() {
            files.push(name);
        }
    }
    dirs.sort();
    files.sort();
    for d in &dirs {
        zip.add_dir(&format!("{rel}{d}/"))?;
    }
    for f in &files {
        let data = std::fs::read(dir.join(f))?;
        zip.add(&format!("{rel}{f}"), &data)?;
    }
    for d in &dirs {
        add_tree(zip, &dir.join(d), &format!("{rel}{d}/"))?;
    }
    Ok(())
}

/// `ProfileResult.trace`: base64 of the zip, or empty when it is over the limit.
pub(crate) fn trace_of(dir: &Path) -> (String, Option<String>) {
    match zip_dir(dir) {
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
    /// A file entry, deflated when that is smaller.
    fn add(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data)?;
        let compressed = enc.finish()?;
        let (method, body): (u16, &[u8]) = if compressed.len() < data.len() { (8, &compressed) } else { (0, data) };
        // A regular file, rw-r--r--.
        self.entry(name, data, method, body, 0o100_644u32 << 16)
    }

    /// A directory entry (`name` ends in `/`), stored empty as Python's `zipfile` writes one:
    /// mode drwxr-xr-x and the MS-DOS directory bit.
    fn add_dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, &[], 0, &[], (0o040_755u32 << 16) | 0x10)
    }

    fn entry(&mut self, name: &str, data: &[u8], method: u16, body: &[u8], external: u32) -> std::io::Result<()> {
        let too_big = || std::io::Error::other("zip entry or archive over 4 GiB");
        let mut crc = flate2::Crc::new();
        crc.update(data);
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
        c.extend_from_slice(&external.to_le_bytes());
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
