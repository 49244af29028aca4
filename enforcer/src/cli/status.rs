//! `enforcer status`: what the running agent says (over the control
//! socket) and what the kernel holds now (the pinned maps), or the latter
//! alone when no agent answers.

use std::path::PathBuf;

use super::PinDirArg;
use crate::{
    control::{self, Request},
    status::kernel_view,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pins: PinDirArg,
    #[command(flatten)]
    pub output: super::OutputArg,
    /// Control socket (default: the config's control.socket).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Only the paths are needed: `status` works while the config has an
    // error elsewhere (it is how a failed reload is seen).
    let at = args.pins.config.locations();
    let pin_dir = args.pins.pin_dir.clone().unwrap_or(at.pin_dir);
    let socket = args.socket.clone().unwrap_or(at.socket);
    // The running agent knows more (databases, scope, uptime); without one
    // the pins still say what the kernel enforces.
    let (agent, kernel, note) = match control::client::call(&socket, &Request::Status {}) {
        Ok(v) => (
            v.get("agent").cloned(),
            v.get("kernel").cloned().unwrap_or_default(),
            None,
        ),
        Err(e) => match kernel_view(&pin_dir) {
            Ok(kernel) => (None, kernel, Some(e.to_string())),
            // Say both: the socket's answer often tells a user without
            // root what to do (the admin group), the pins' why it failed.
            Err(pins) => anyhow::bail!("{e}; and reading the pins: {pins}"),
        },
    };
    if args.output.json() {
        let v = serde_json::json!({ "agent": agent, "agent_unreachable": note, "kernel": kernel });
        println!("{v}");
        return Ok(());
    }
    match (&agent, &note) {
        (Some(a), _) => print_agent(a),
        (None, Some(n)) => println!("agent:      not reachable ({n}); what is pinned:"),
        (None, None) => {}
    }
    print_kernel(&kernel);
    Ok(())
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_agent(a: &serde_json::Value) {
    println!(
        "agent:      pid {} version {} up {}s{}",
        s(&a["pid"]),
        s(&a["version"]),
        s(&a["uptime_seconds"]),
        if a["adopted"] == true {
            " (adopted the pinned datapath)"
        } else {
            ""
        }
    );
    let p = &a["privileges"];
    if !p.is_null() {
        let caps: Vec<String> = p["effective"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        println!(
            "privileges: {} (no_new_privs {}; docs/capabilities.md)",
            if caps.is_empty() {
                "no capabilities".to_owned()
            } else {
                caps.join(" ")
            },
            s(&p["no_new_privs"])
        );
    }
    let source = |v: &serde_json::Value| match v.as_str() {
        Some("runtime") => "switched with `enforcer mode`",
        _ => "from the config",
    };
    println!(
        "mode:       {} ({})",
        s(&a["mode"]),
        source(&a["mode_source"])
    );
    for o in a["overrides"].as_array().into_iter().flatten() {
        println!(
            "override:   {} {} ({})",
            s(&o["cgroup"]),
            s(&o["mode"]),
            source(&o["source"])
        );
    }
    let list = |v: &serde_json::Value| {
        let items: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(" ")
        }
    };
    println!("scope:      {}", list(&a["scope"]));
    println!("interfaces: {}", list(&a["interfaces"]));
    for e in a["coverage"].as_array().into_iter().flatten() {
        let hooks: Vec<String> = e["hooks"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, on)| on.as_bool() != Some(true))
            .map(|(h, _)| h.clone())
            .collect();
        let detail = match e["state"].as_str() {
            Some("covered") => format!("{} {}", s(&e["kind"]), s(&e["id"])),
            Some("waiting") => "does not exist; covered when it is created".to_owned(),
            _ => format!(
                "NOT COVERED: {}{}",
                if hooks.is_empty() {
                    String::new()
                } else {
                    format!("hooks missing {}; ", hooks.join(" "))
                },
                s(&e["error"])
            ),
        };
        println!(
            "coverage:   {} {} ({detail})",
            s(&e["scope"]),
            s(&e["state"])
        );
    }
    if let Some(repairs) = a["coverage_repairs"].as_object().filter(|r| !r.is_empty()) {
        let list: Vec<String> = repairs
            .iter()
            .map(|(cause, n)| format!("{cause} {}", s(n)))
            .collect();
        println!("repairs:    {}", list.join(", "));
    }
    for d in a["databases"].as_array().into_iter().flatten() {
        let built = d["build_epoch"]
            .as_u64()
            .map(|e| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(e),
                )
                .to_string()
            })
            .unwrap_or_else(|| "-".into());
        // The kind (how it was read) and, for a .mmdb, its database type.
        let what = match (d["kind"].as_str(), d["type"].as_str()) {
            (Some(k), Some(t)) => format!("{k}, {t}"),
            (Some(k), None) => k.to_owned(),
            (None, t) => t.unwrap_or("-").to_owned(),
        };
        println!(
            "database:   {} ({what}, built {built}, sha256 {})",
            s(&d["path"]),
            s(&d["sha256"])
        );
        if d["too_old"].as_bool() == Some(true) {
            println!(
                "            TOO OLD: built {} days ago, geoip.max_age is {} days: refresh it",
                d["age_seconds"].as_u64().unwrap_or(0) / 86_400,
                d["max_age_seconds"].as_u64().unwrap_or(0) / 86_400
            );
        }
        match d["on_disk"].as_str() {
            Some("differs") => println!(
                "            the file on disk differs (sha256 {}): not in force until a reload",
                s(&d["on_disk_sha256"])
            ),
            Some("unreadable") => println!(
                "            the file on disk cannot be read ({}): a reload would fail",
                s(&d["on_disk_error"])
            ),
            _ => {}
        }
    }
    print_held(&a["reload_held"]);
    print_baseline(&a["reload_guard_baseline"]);
    println!(
        "prefixes:   {} IPv4 + {} IPv6; rules {} IPv4 + {} IPv6",
        s(&a["prefixes"]["ipv4"]),
        s(&a["prefixes"]["ipv6"]),
        s(&a["rules"]["ipv4"]),
        s(&a["rules"]["ipv6"])
    );
    if let Some(fill) = a["map_fill"].as_object() {
        let parts: Vec<String> = fill
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} {}/{} ({:.1}%)",
                    s(&v["entries"]),
                    s(&v["capacity"]),
                    v["fill"].as_f64().unwrap_or(0.0) * 100.0
                )
            })
            .collect();
        println!("map fill:   {}", parts.join(", "));
    }
    println!("policy:     sha256 {}", s(&a["policy_sha256"]));
    println!("audit log:  {}", s(&a["audit_log"]));
    for k in a["sinks"].as_array().into_iter().flatten() {
        println!(
            "sink:       {} {} {} (dropped {}, write errors {}, reopens {}{}){}",
            s(&k["sink"]),
            s(&k["path"]),
            s(&k["state"]),
            k["dropped"],
            k["write_errors"],
            k["reopens"],
            match k["pending_bytes"].as_u64() {
                Some(n) if n > 0 => format!(", {n} bytes waiting"),
                _ => String::new(),
            },
            match k["last_error"].as_str() {
                Some(e) => format!("; last error: {e}"),
                None => String::new(),
            }
        );
    }
    println!(
        "loads:      {} ok, {} failed{}",
        s(&a["policy_loads"]["ok"]),
        s(&a["policy_loads"]["failed"]),
        match &a["last_error"] {
            serde_json::Value::String(e) => format!("; last error: {e}"),
            _ => String::new(),
        }
    );
}

/// A reload the guard holds (`geoip.max_flip`), if any.
fn print_held(h: &serde_json::Value) {
    if h.is_null() {
        return;
    }
    let since = h["since_unix"]
        .as_f64()
        .map(|t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0)),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into());
    println!(
        "RELOAD HELD: since {since} ({}): the new GeoIP data would flip more address space than geoip.max_flip allows; the policy in force stays",
        s(&h["trigger"])
    );
    for (label, key) in [("IPv4", "ipv4"), ("IPv6", "ipv6")] {
        let f = &h["flip"][key];
        println!(
            "            {label}: {} addresses flipped ({} allowed -> refused, {} refused -> allowed), bound {} ({}){}",
            s(&f["flipped"]),
            s(&f["allowed_to_refused"]),
            s(&f["refused_to_allowed"]),
            s(&f["bound"]),
            s(&f["max_flip"]),
            if f["exceeds"].as_bool() == Some(true) {
                ": EXCEEDS"
            } else {
                ""
            }
        );
    }
    for d in h["databases"].as_array().into_iter().flatten() {
        println!(
            "            held: {} sha256 {}",
            s(&d["path"]),
            s(&d["sha256"])
        );
    }
    println!(
        "            review with `enforcer geoip diff`; apply with `enforcer reload --accept-change`"
    );
}

/// The reload guard's baseline, when something is wrong with it.
fn print_baseline(b: &serde_json::Value) {
    if let Some(why) = b["missing_at_start"].as_str() {
        println!(
            "BASELINE MISSING: this start adopted data in force without a baseline to compare with, so the reload guard did not check the data on disk ({why})"
        );
    }
    if let Some(e) = b["last_write_error"].as_str() {
        println!(
            "baseline:   cannot be written ({} failures; {e}): a restart cannot compare with the data in force",
            s(&b["write_failures"])
        );
    }
}

fn print_kernel(k: &serde_json::Value) {
    println!(
        "pin dir:    {} (layout v{})",
        s(&k["pin_dir"]),
        s(&k["layout"])
    );
    println!("kernel:     mode {}", s(&k["mode"]));
    println!(
        "slot:       {} (generation {})",
        s(&k["active_slot"]),
        s(&k["generation"])
    );
    let links: Vec<String> = k["links"].as_array().into_iter().flatten().map(s).collect();
    println!(
        "links:      {}",
        if links.is_empty() {
            "none: nothing is enforced".to_owned()
        } else {
            links.join(" ")
        }
    );
    let line = |v: &serde_json::Value| {
        let parts: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| format!("{k}={}", s(n)))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(" ")
        }
    };
    println!("connections: {}", line(&k["connections"]));
    let carried: Vec<String> = k["counters_carried_from"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| format!("v{}", s(v)))
        .collect();
    if !carried.is_empty() {
        // Without this line a jump in the counts after an upgrade would
        // look like traffic.
        println!(
            "counters:    include layout {} (carried at an upgrade)",
            carried.join(" ")
        );
    }
    println!("packets:     {}", line(&k["packets"]));
    let sup = &k["events_suppressed"];
    if sup["rate_limit"].as_u64().unwrap_or(0) + sup["ring_full"].as_u64().unwrap_or(0) > 0 {
        println!(
            "events not emitted: rate_limit={} ring_full={}",
            s(&sup["rate_limit"]),
            s(&sup["ring_full"])
        );
    }
    let by_country = line(&k["denied_or_would_deny_by_country"]);
    if by_country != "none" {
        println!("connections refused or would refuse, by country: {by_country}");
    }
}
