//! The containment settings, per-job limits, limit hits and the resource
//! usage a job reports. Pure: parsing and wording only, no I/O.

use serde::Serialize;

/// `auto` (default) or `off`: whether jobs run in cgroups where the host
/// allows it.
pub const CONTAINMENT_ENV: &str = "PANORAMA_GATEWAY_CONTAINMENT";
/// Memory limit per job (`64M`, `1G`, `67108864`; default: none).
pub const MEMORY_MAX_ENV: &str = "PANORAMA_GATEWAY_JOB_MEMORY_MAX";
/// Process (task) limit per job (default: none).
pub const PIDS_MAX_ENV: &str = "PANORAMA_GATEWAY_JOB_PIDS_MAX";
/// CPU weight per job, 1–10000 like cgroup v2 `cpu.weight` (default: none,
/// the kernel's 100).
pub const CPU_WEIGHT_ENV: &str = "PANORAMA_GATEWAY_JOB_CPU_WEIGHT";

/// The containment setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Auto,
    Off,
}

impl Setting {
    pub fn as_str(self) -> &'static str {
        match self {
            Setting::Auto => "auto",
            Setting::Off => "off",
        }
    }
}

/// A setting that does not parse: says which variable and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not valid: {expected}. Fix or unset it and start the gateway again.")]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// `PANORAMA_GATEWAY_CONTAINMENT`: unset/empty/`auto` → auto, `off` (also
/// `0`, `false`, `no`, `none`) → off.
pub fn parse_setting(raw: Option<&str>) -> Result<Setting, SettingError> {
    let Some(value) = raw.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Setting::Auto);
    };
    match value.to_ascii_lowercase().as_str() {
        "auto" | "on" | "1" | "true" | "yes" | "cgroup" => Ok(Setting::Auto),
        "off" | "0" | "false" | "no" | "none" => Ok(Setting::Off),
        _ => Err(SettingError {
            name: CONTAINMENT_ENV,
            value: value.to_string(),
            expected: "auto or off",
        }),
    }
}

/// Optional limits for one job's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The limits from the three settings (`env` reads a variable).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Limits, SettingError> {
        let get = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let memory_bytes = match get(MEMORY_MAX_ENV) {
            None => None,
            Some(v) => Some(parse_bytes(&v).ok_or(SettingError {
                name: MEMORY_MAX_ENV,
                value: v,
                expected: "a byte count of at least 1M, e.g. 67108864, 64M, 64MiB or 2G",
            })?),
        };
        let max_processes = match get(PIDS_MAX_ENV) {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(SettingError {
                        name: PIDS_MAX_ENV,
                        value: v,
                        expected: "a whole number of processes, at least 1",
                    })?,
            ),
        };
        let cpu_weight = match get(CPU_WEIGHT_ENV) {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or(SettingError {
                        name: CPU_WEIGHT_ENV,
                        value: v,
                        expected: "a whole number from 1 to 10000 (100 is the default share)",
                    })?,
            ),
        };
        Ok(Limits {
            memory_bytes,
            max_processes,
            cpu_weight,
        })
    }
}

/// `67108864`, `64k`, `64M`, `64MiB`, `2G`, `2GB` (binary units). At least
/// 1 MiB: a smaller limit would kill any shell at once.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|b| *b >= 1 << 20)
}

/// v1 `cpu.shares` for a v2-style weight (100 ↔ 1024).
pub fn weight_to_shares(weight: u64) -> u64 {
    (weight * 1024 / 100).max(2)
}

/// `67108864` → `64 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {name}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

/// Which limit a job ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LimitHit {
    /// The kernel's OOM killer acted inside the job's cgroup.
    Memory { limit_bytes: u64 },
    /// A fork was refused because the job had `limit` processes.
    Processes { limit: u64 },
}

impl LimitHit {
    /// The limit's name as documented (`resource_usage.limit_exceeded`).
    pub fn name(&self) -> &'static str {
        match self {
            LimitHit::Memory { .. } => "memory",
            LimitHit::Processes { .. } => "processes",
        }
    }

    /// The error a job that hit the limit ends with.
    pub fn message(&self) -> String {
        match self {
            LimitHit::Memory { limit_bytes } => format!(
                "Job exceeded its memory limit of {} ({MEMORY_MAX_ENV}); the kernel killed a process and the gateway stopped the job. Raise the limit or make the job use less memory.",
                human_bytes(*limit_bytes)
            ),
            LimitHit::Processes { limit } => format!(
                "Job reached its process limit of {limit} ({PIDS_MAX_ENV}); a fork was refused and the gateway stopped the job. Raise the limit or make the job start fewer processes."
            ),
        }
    }
}

/// What a job's processes cost the machine, read from its cgroup before it
/// is removed (`resource_usage` in run metadata and job results). A value
/// the hierarchy does not offer is `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResourceUsage {
    /// `cgroup_v2`, `cgroup_v1`, `cgroup_hybrid` or `tree_tag`.
    pub containment: &'static str,
    /// Peak memory of the job's cgroup (v1 `memory.max_usage_in_bytes`,
    /// v2 `memory.peak`).
    pub peak_memory_bytes: Option<u64>,
    /// CPU time of every process of the job (v2 `cpu.stat` `usage_usec`,
    /// v1 `cpuacct.usage`).
    pub cpu_time_ms: Option<u64>,
    /// The most processes the job had at once (`pids.peak`).
    pub max_processes: Option<u64>,
    /// `memory` or `processes` when the job was stopped for a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_exceeded: Option<&'static str>,
}

impl ResourceUsage {
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_reject_with_the_variable_name() {
        assert_eq!(parse_setting(None), Ok(Setting::Auto));
        assert_eq!(parse_setting(Some(" ")), Ok(Setting::Auto));
        assert_eq!(parse_setting(Some("OFF")), Ok(Setting::Off));
        assert_eq!(parse_setting(Some("auto")), Ok(Setting::Auto));
        let e = parse_setting(Some("maybe")).unwrap_err();
        assert!(e
            .to_string()
            .contains("PANORAMA_GATEWAY_CONTAINMENT=\"maybe\""));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64M"), Some(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("67108864"), Some(64 << 20));
        assert_eq!(parse_bytes("1k"), None, "below 1 MiB");
        assert_eq!(parse_bytes("12 parsecs"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(1), 10);
    }

    #[test]
    fn limits_from_env() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(Limits::from_env(env(&[])).unwrap().is_empty());
        let l = Limits::from_env(env(&[
            (MEMORY_MAX_ENV, "64M"),
            (PIDS_MAX_ENV, "50"),
            (CPU_WEIGHT_ENV, "200"),
        ]))
        .unwrap();
        assert_eq!(
            l,
            Limits {
                memory_bytes: Some(64 << 20),
                max_processes: Some(50),
                cpu_weight: Some(200)
            }
        );
        let e = Limits::from_env(env(&[(PIDS_MAX_ENV, "-3")])).unwrap_err();
        assert_eq!(e.name, PIDS_MAX_ENV);
        assert!(Limits::from_env(env(&[(CPU_WEIGHT_ENV, "0")])).is_err());
    }

    #[test]
    fn limit_messages_name_the_limit() {
        let m = LimitHit::Memory {
            limit_bytes: 64 << 20,
        }
        .message();
        assert!(m.contains("memory limit of 64 MiB"), "{m}");
        let p = LimitHit::Processes { limit: 50 }.message();
        assert!(p.contains("process limit of 50"), "{p}");
        let usage = ResourceUsage {
            containment: "cgroup_v1",
            peak_memory_bytes: Some(1),
            cpu_time_ms: Some(2),
            max_processes: Some(3),
            limit_exceeded: Some("memory"),
        };
        assert_eq!(
            usage.to_value(),
            serde_json::json!({"containment": "cgroup_v1", "peak_memory_bytes": 1, "cpu_time_ms": 2, "max_processes": 3, "limit_exceeded": "memory"})
        );
    }
}

/// What the jobs of one kind (`agent_process`, `shell_exec`, …) have cost
/// since the gateway started, summed from each job's [`ResourceUsage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Jobs whose processes ended.
    pub jobs: u64,
    /// CPU time of all of them (only jobs with a cgroup report it).
    pub cpu_time_ms: u64,
    /// The highest peak memory of one job.
    pub max_peak_memory_bytes: u64,
    /// The most processes one job had at once.
    pub max_processes: u64,
    /// Jobs stopped at a limit, by limit (`memory`, `processes`).
    pub limit_exceeded: std::collections::BTreeMap<&'static str, u64>,
}

impl UsageTotals {
    /// Adds one ended job (pure).
    pub fn add(&mut self, usage: &ResourceUsage) {
        self.jobs += 1;
        self.cpu_time_ms += usage.cpu_time_ms.unwrap_or(0);
        self.max_peak_memory_bytes = self
            .max_peak_memory_bytes
            .max(usage.peak_memory_bytes.unwrap_or(0));
        self.max_processes = self.max_processes.max(usage.max_processes.unwrap_or(0));
        if let Some(limit) = usage.limit_exceeded {
            *self.limit_exceeded.entry(limit).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod usage_totals_tests {
    use super::*;

    #[test]
    fn totals_sum_cpu_and_keep_the_highest_peaks() {
        let mut t = UsageTotals::default();
        t.add(&ResourceUsage {
            containment: "cgroup_v2",
            peak_memory_bytes: Some(100),
            cpu_time_ms: Some(7),
            max_processes: Some(3),
            limit_exceeded: None,
        });
        t.add(&ResourceUsage {
            containment: "cgroup_v2",
            peak_memory_bytes: Some(50),
            cpu_time_ms: Some(5),
            max_processes: Some(9),
            limit_exceeded: Some("memory"),
        });
        t.add(&ResourceUsage {
            containment: "tree_tag",
            peak_memory_bytes: None,
            cpu_time_ms: None,
            max_processes: None,
            limit_exceeded: None,
        });
        assert_eq!(t.jobs, 3);
        assert_eq!(t.cpu_time_ms, 12);
        assert_eq!(t.max_peak_memory_bytes, 100);
        assert_eq!(t.max_processes, 9);
        assert_eq!(t.limit_exceeded.get("memory"), Some(&1));
    }
}
