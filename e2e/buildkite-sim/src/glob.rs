//! Small glob matchers: branch/tag wildcards and artifact path globs.

use std::path::{Path, PathBuf};

/// `*` matches any run of characters (including `/`), everything else literally.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Path glob over `/`-separated relative paths: `**` matches any number of segments,
/// `*` any characters within a segment, `?` one character within a segment.
pub fn path_match(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&pat, &segs)
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|i| match_segments(rest, &segs[i..])),
        Some((p, rest)) => match segs.split_first() {
            Some((s, srest)) => segment_match(p, s) && match_segments(rest, srest),
            None => false,
        },
    }
}

fn segment_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Files under `root` (relative, `/`-separated) matching any of the `;`-separated patterns
/// of a Buildkite `artifact_paths` value. Symlinks are not followed.
pub fn find_artifacts(root: &Path, artifact_paths: &str) -> Vec<(String, PathBuf)> {
    let patterns: Vec<&str> = artifact_paths.split(';').map(str::trim).filter(|p| !p.is_empty()).collect();
    if patterns.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let Ok(rel) = path.strip_prefix(root) else { continue };
                let rel = rel.to_string_lossy().replace('\\', "/");
                if patterns.iter().any(|p| path_match(p, &rel)) {
                    out.push((rel, path));
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard() {
        assert!(wildcard_match("*dev*", "feature/dev-1"));
        assert!(wildcard_match("main", "main"));
        assert!(!wildcard_match("main", "mainx"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn paths() {
        assert!(path_match("result.json", "result.json"));
        assert!(!path_match("result.json", "sub/result.json"));
        assert!(path_match("**/*.json", "sub/x/result.json"));
        assert!(path_match("**/*.json", "result.json"));
        assert!(path_match("logs/*.txt", "logs/a.txt"));
        assert!(!path_match("logs/*.txt", "logs/a/b.txt"));
        assert!(path_match("./res?lt.json", "result.json"));
    }
}
