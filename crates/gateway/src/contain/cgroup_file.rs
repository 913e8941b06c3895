//! Reading and writing one cgroup file, the way the kernel wants it. The
//! bottom of `contain`'s cgroup code: [`super::v1`], [`super::v2`] and
//! [`super::cgroupfs`] use it; it uses none of them.

use std::io;
use std::path::Path;

/// Write `value` to a cgroup file (one `write(2)`, as the kernel wants).
pub(super) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// A file holding one number (`max` and unreadable → `None`).
pub(super) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (`cgroup.events`,
/// `memory.events`, `cpu.stat`, `memory.oom_control`).
pub(super) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
