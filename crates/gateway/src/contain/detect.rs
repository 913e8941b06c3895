//! Finding the cgroup hierarchies this process could use: which are
//! mounted (`/proc/self/mountinfo`), where this process sits in each
//! (`/proc/self/cgroup`), and where the gateway's own parent cgroup goes.
//! The parsing is pure; [`probe`](super::probe) then proves a hierarchy
//! writable by placing a real process in it.

use std::path::{Path, PathBuf};

/// The v1 controllers containment uses (others are ignored).
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
}

/// One mounted cgroup hierarchy and where this process sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// v1: the mount's controllers among [`V1_CONTROLLERS`]; v2: filled
    /// from `cgroup.controllers` by the caller.
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    /// This process's cgroup directory in the hierarchy.
    pub own_dir: PathBuf,
    /// The mount is read-write.
    pub rw: bool,
}

/// A cgroup mount from one `/proc/self/mountinfo` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    version: Version,
    root: String,
    mount_point: PathBuf,
    controllers: Vec<String>,
    rw: bool,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.clone().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn parse_mount(line: &str) -> Option<Mount> {
    // id parent major:minor root mount-point options [optional…] - fstype source super-options
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split_whitespace().collect();
    let right: Vec<&str> = right.split_whitespace().collect();
    let version = match *right.first()? {
        "cgroup2" => Version::V2,
        "cgroup" => Version::V1,
        _ => return None,
    };
    let rw = left.get(5)?.split(',').any(|o| o == "rw")
        && right
            .get(2)
            .is_none_or(|o| !o.split(',').any(|o| o == "ro"));
    let controllers = match version {
        Version::V2 => Vec::new(),
        Version::V1 => right
            .get(2)?
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o))
            .map(str::to_string)
            .collect(),
    };
    Some(Mount {
        version,
        root: unescape(left.get(3)?),
        mount_point: PathBuf::from(unescape(left.get(4)?)),
        controllers,
        rw,
    })
}

/// `hierarchy-id:controllers:path` lines: the v2 path (id 0, no
/// controllers) and the path per v1 controller.
fn own_paths(proc_cgroup: &str) -> (Option<String>, Vec<(Vec<String>, String)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else {
            v1.push((
                ctrls.split(',').map(str::to_string).collect(),
                path.to_string(),
            ));
        }
    }
    (v2, v1)
}

/// `mount_point` + `own` relative to the mount's `root` (a container may
/// see its own cgroup as the mount root). `None` when `own` is outside.
fn own_dir(mount_point: &Path, root: &str, own: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        own.trim_start_matches('/')
    } else {
        own.strip_prefix(root)?.trim_start_matches('/')
    };
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount_point.to_path_buf()
    } else {
        mount_point.join(rel)
    })
}

/// The usable hierarchies from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`: the v2 mount (if any) and every v1 mount with a
/// controller containment uses. Read-only mounts are listed with
/// `rw: false` so the reason can be reported.
pub fn hierarchies(mountinfo: &str, proc_cgroup: &str) -> Vec<Hierarchy> {
    let (v2_path, v1_paths) = own_paths(proc_cgroup);
    let mut out = Vec::new();
    for mount in mountinfo.lines().filter_map(parse_mount) {
        let own = match mount.version {
            Version::V2 => v2_path.clone(),
            Version::V1 => {
                if mount.controllers.is_empty() {
                    continue;
                }
                v1_paths
                    .iter()
                    .find(|(ctrls, _)| mount.controllers.iter().all(|c| ctrls.contains(c)))
                    .map(|(_, p)| p.clone())
            }
        };
        let Some(own) = own else { continue };
        let Some(dir) = own_dir(&mount.mount_point, &mount.root, &own) else {
            continue;
        };
        // One hierarchy may be mounted twice; keep the first.
        if out
            .iter()
            .any(|h: &Hierarchy| h.version == mount.version && h.controllers == mount.controllers)
        {
            continue;
        }
        out.push(Hierarchy {
            version: mount.version,
            controllers: mount.controllers,
            mount_point: mount.mount_point,
            own_dir: dir,
            rw: mount.rw,
        });
    }
    out
}

/// The gateway's parent cgroup name: one per config directory, so two
/// gateways on one host never share (or sweep) each other's jobs.
pub fn parent_name(identity: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("panorama-gateway-{hex}")
}

/// Job cgroup directory names start with this (the sweep at start only
/// touches these).
pub const JOB_PREFIX: &str = "job-";

/// A path the placement code can hand to `/bin/sh` inside single quotes
/// and to `open(2)` as-is: cgroup paths we build never need more.
pub fn is_plain_path(path: &Path) -> bool {
    path.to_str().is_some_and(|s| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-.:@+,".contains(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids ro,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/b41e
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn hybrid_host_lists_v2_and_the_v1_controllers_in_use() {
        let h = hierarchies(HYBRID_MOUNTS, HYBRID_SELF);
        let summary: Vec<(Version, Vec<String>, String, bool)> = h
            .iter()
            .map(|h| {
                (
                    h.version,
                    h.controllers.clone(),
                    h.own_dir.display().to_string(),
                    h.rw,
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                (Version::V1, s(&["cpu"]), "/sys/fs/cgroup/cpu".into(), true),
                (
                    Version::V1,
                    s(&["cpuacct"]),
                    "/sys/fs/cgroup/cpuacct".into(),
                    true
                ),
                (
                    Version::V1,
                    s(&["memory"]),
                    "/sys/fs/cgroup/memory/process_api/b41e".into(),
                    true
                ),
                (
                    Version::V1,
                    s(&["freezer"]),
                    "/sys/fs/cgroup/freezer".into(),
                    true
                ),
                (
                    Version::V1,
                    s(&["pids"]),
                    "/sys/fs/cgroup/pids".into(),
                    false
                ),
                (Version::V2, vec![], "/sys/fs/cgroup/unified".into(), true),
            ]
        );
    }

    #[test]
    fn systemd_v2_service_and_container_roots() {
        let mounts = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/system.slice/panorama.service\n";
        let h = hierarchies(mounts, own);
        assert_eq!(h.len(), 1);
        assert_eq!(
            h[0].own_dir,
            PathBuf::from("/sys/fs/cgroup/system.slice/panorama.service")
        );
        // A container sees its cgroup as the mount root.
        let mounts = "30 24 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = hierarchies(mounts, "0::/docker/abc/sub\n");
        assert_eq!(h[0].own_dir, PathBuf::from("/sys/fs/cgroup/sub"));
        // Combined v1 mounts (cpu,cpuacct) are one hierarchy.
        let mounts = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let h = hierarchies(mounts, "2:cpu,cpuacct:/x\n");
        assert_eq!(h[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(h[0].own_dir, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x"));
        assert!(hierarchies("", "").is_empty());
    }

    #[test]
    fn parent_names_are_stable_and_distinct() {
        let a = parent_name("/home/a/.panorama");
        assert_eq!(a, parent_name("/home/a/.panorama"));
        assert_ne!(a, parent_name("/home/b/.panorama"));
        assert!(a.starts_with("panorama-gateway-") && a.len() == 17 + 12);
        assert!(is_plain_path(Path::new("/sys/fs/cgroup/x/job-1a")));
        assert!(!is_plain_path(Path::new("/sys/fs/cgroup/it's")));
    }
}
