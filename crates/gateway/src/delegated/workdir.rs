//! Run work dirs (runtime.md §3.5): `<work root>/<kind>/<segments…>`, 0700,
//! removed with their empty parents afterwards.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use panorama_providers::argv::PlanFile;

use super::error::DelegatedError;

fn check_segment(label: &'static str, raw: &str) -> Result<String, DelegatedError> {
    let s = raw.trim();
    let problem = if s.is_empty() {
        Some("is required")
    } else if s == "." || s == ".." {
        Some("contains invalid path segments")
    } else if s.contains('/') || s.contains('\\') {
        Some("contains path separators")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(DelegatedError::InvalidSegment { label, problem }),
        None => Ok(s.to_string()),
    }
}

/// A created work dir; call [`WorkDir::cleanup`] when the run ends.
#[derive(Debug, Clone)]
pub struct WorkDir {
    pub root: PathBuf,
    pub path: PathBuf,
}

impl WorkDir {
    /// `root/kind/<seg>/<seg>…`, created 0700.
    pub fn create(
        root: &Path,
        kind: &str,
        segments: &[(&'static str, &str)],
    ) -> Result<WorkDir, DelegatedError> {
        let mut path = root.join(kind);
        for (label, raw) in segments {
            path.push(check_segment(label, raw)?);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|source| DelegatedError::WorkDir {
                path: path.display().to_string(),
                source,
            })?;
        Ok(WorkDir {
            root: root.to_path_buf(),
            path,
        })
    }

    /// Writes the plan's files owner-only (0600), refusing paths that leave the dir.
    pub fn write_files(&self, files: &[PlanFile]) -> Result<(), DelegatedError> {
        for file in files {
            let rel = Path::new(file.relative_path.trim());
            let escapes = rel.is_absolute()
                || rel.as_os_str().is_empty()
                || rel
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
            if escapes {
                return Err(DelegatedError::UnsafePlanFile {
                    path: file.relative_path.clone(),
                });
            }
            let full = self.path.join(rel);
            if let Some(parent) = full.parent() {
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent);
            }
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&full)
                .and_then(|mut f| std::io::Write::write_all(&mut f, file.contents.as_bytes()));
            written.map_err(|source| DelegatedError::PlanFile {
                path: full.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Remove the dir, then each empty parent up to (not including) the root.
    pub fn cleanup(&self) {
        if std::fs::remove_dir_all(&self.path).is_err() {
            return;
        }
        let mut dir = self.path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_checked_and_cleanup_removes_empty_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("work");
        let err = WorkDir::create(&root, "subagents", &[("run id", "a/b")]).unwrap_err();
        assert_eq!(err.to_string(), "run id contains path separators");
        let err = WorkDir::create(&root, "subagents", &[("run id", " ")]).unwrap_err();
        assert_eq!(err.to_string(), "run id is required");
        let wd =
            WorkDir::create(&root, "subagents", &[("subagent id", "s"), ("run id", "r")]).unwrap();
        wd.write_files(&[PlanFile {
            relative_path: "system.md".into(),
            contents: "hi".into(),
        }])
        .unwrap();
        assert!(wd
            .write_files(&[PlanFile {
                relative_path: "../x".into(),
                contents: String::new(),
            }])
            .is_err());
        assert!(wd.path.join("system.md").exists());
        wd.cleanup();
        assert!(!root.join("subagents").exists());
        assert!(root.exists());
    }
}
