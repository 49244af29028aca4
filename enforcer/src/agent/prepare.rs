//! Everything a policy load needs, prepared without touching the kernel:
//! the config validated, every GeoIP source loaded, compiled and checked
//! against the maps' capacity, the scope cgroups opened and interfaces
//! looked up, the control group and the events file checked. A failure
//! here leaves the policy in force untouched.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    config::Config, control::peer::Access, datapath, events, policy::CompiledPolicy, scope,
};

/// A policy ready to be applied.
pub(super) struct Prepared {
    pub config: Config,
    pub policy: CompiledPolicy,
    /// The scope cgroups and interfaces that exist now (the others are
    /// covered by the coverage loop when they appear).
    pub targets: Vec<scope::CgroupTarget>,
    pub interfaces: Vec<scope::InterfaceTarget>,
    pub access: Access,
    /// Signs the audit log's checkpoints (`audit.signing_key`).
    pub signer: Option<crate::audit::NoteSigner>,
}

/// Loads the config at `path` (the embedded default without one) and
/// prepares it. Blocking: database loads take hundreds of milliseconds.
pub(super) fn prepare(path: Option<&Path>) -> anyhow::Result<Prepared> {
    let config = Config::load_or_default(path)?;
    config.check_default_database()?;
    let policy = CompiledPolicy::compile(&config)?;
    release_free_memory("policy compiled");
    for s in &policy.sources {
        tracing::info!(
            source = %s.info.path.display(),
            sha256 = %s.info.sha256,
            database_type = s.info.database_type.as_deref().unwrap_or("-"),
            raw_v4 = s.stats.raw_v4,
            raw_v6 = s.stats.raw_v6,
            aggregated_v4 = s.stats.aggregated_v4,
            aggregated_v6 = s.stats.aggregated_v6,
            unlocated = s.stats.unlocated,
            seconds = format!("{:.2}", s.load_seconds),
            "GeoIP source loaded"
        );
    }
    datapath::check_capacity(&policy)?;
    // Absent entries are not an error: they are covered when they appear.
    let scope::ResolvedScope {
        present: targets,
        absent: absent_cgroups,
    } = scope::resolve(&config.scope)?;
    // Interface names mean something only in a network namespace: the
    // agent's own, which is the one it attaches in.
    let (interfaces, absent_interfaces) = scope::resolve_interfaces(&config.interfaces)
        .with_context(|| format!("{}: scope.interfaces", config.origin))?;
    for path in &absent_cgroups {
        tracing::warn!(cgroup = %path.display(), "scope cgroup does not exist yet; it is covered when it is created");
    }
    for name in &absent_interfaces {
        tracing::warn!(interface = %name, "scope interface does not exist yet; it is covered when it is created");
    }
    // Opened now so an override outside the scope fails here, before the
    // kernel; resolved again with the runtime changes when applied.
    scope::resolve_present_overrides(&config.scope, &config.overrides)?;
    let access = Access::resolve(config.control.admin_group.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.origin))?;
    events::check_sinks(&config.events).with_context(|| {
        format!(
            "{}: events.file {:?}: cannot open for appending",
            config.origin,
            config.events.file.as_deref().unwrap_or(Path::new("-"))
        )
    })?;
    // An unreadable key, one in another form, or one group or others can
    // read fails the load (a reload then leaves the policy in force).
    let signer = config
        .audit
        .signer()
        .with_context(|| format!("{}: audit.signing_key", config.origin))?;
    Ok(Prepared {
        config,
        policy,
        targets,
        interfaces,
        access,
        signer,
    })
}

/// [`prepare`] on a blocking thread, for the async main loop.
pub(super) async fn prepare_blocking(path: Option<PathBuf>) -> anyhow::Result<Prepared> {
    match tokio::task::spawn_blocking(move || prepare(path.as_deref())).await {
        Ok(prepared) => prepared,
        Err(e) => Err(anyhow::anyhow!("preparing the policy: {e}")),
    }
}

/// Gives the memory the allocator holds free back to the system, and logs
/// the resident set (debug). Loading a database and building the flat
/// tables free tens of MiB that glibc would otherwise keep resident (freed
/// heap memory below the top is not returned on its own), and the next
/// stage would add its own on top of it: the agent's peak RSS is what
/// matters on a storage host.
pub(super) fn release_free_memory(stage: &str) {
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        tracing::debug!(
            stage,
            rss = field("VmRSS:"),
            peak_rss = field("VmHWM:"),
            "memory"
        );
    }
}
