//! packaging/kubernetes, checked with the ecosystem's own tools (no root,
//! no cluster):
//!
//! - every manifest, and what `kubectl kustomize` makes of the directory,
//!   validates in strict mode (unknown fields are errors) with PyPI's
//!   `kubernetes-validate` against the Kubernetes versions in
//!   [`KUBERNETES_VERSIONS`]; copies with a misspelt field, a wrong type
//!   and broken YAML are rejected, so the check can fail;
//! - the ConfigMap's `enforcer.toml` passes the real `enforcer config
//!   check`, with its GeoIP source swapped for a small database;
//! - the manifests agree with one another and with the config: the
//!   `--config` argument names the ConfigMap's file where it is mounted,
//!   the metrics port is the one the config listens on, every path the
//!   config writes or reads is on a volume, the image tag is this release.
//!
//! `cargo xtask setup` installs kubernetes-validate into a venv under the
//! cache directory (xtask/src/setup.rs); the YAML is read with that venv's
//! PyYAML (a dependency of kubernetes-validate), so this crate needs no
//! YAML parser.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use enforcer::config::{Config, Scope};
use enforcer_tests::{agent::enforcer_binary, skip_unless};
use serde_json::Value;

/// The Kubernetes versions whose schemas the manifests must satisfy: the
/// oldest release this project states support for (docs/kubernetes.md) and
/// the newest the pinned validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The manifests `kustomization.yaml` lists, in its order.
const MANIFESTS: &[&str] = &[
    "namespace.yaml",
    "serviceaccount.yaml",
    "configmap.yaml",
    "daemonset.yaml",
    "service.yaml",
];

/// `kind/name` of every resource, as kubernetes-validate names them.
const RESOURCES: &[&str] = &[
    "namespace/egress-enforcer",
    "serviceaccount/egress-enforcer",
    "configmap/egress-enforcer-config",
    "daemonset/egress-enforcer",
    "service/egress-enforcer-metrics",
];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

/// The venv `cargo xtask setup` installs PyPI tools in: the same rule as
/// xtask's `cache_root()` and `setup::python_venv()`.
fn venv() -> PathBuf {
    let non_empty = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_CACHE_HOME")
        .or_else(|| non_empty("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("egress-enforcer")
        .join("venv")
}

fn validator() -> PathBuf {
    venv().join("bin").join("kubernetes-validate")
}

fn have_validator() -> bool {
    Command::new(validator())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn have_kubectl() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

const NO_VALIDATOR: &str = "needs kubernetes-validate in the venv under ~/.cache/egress-enforcer \
                            (`cargo xtask setup` installs it)";

/// `kubernetes-validate --strict -k <version> <files>`.
fn validate(version: &str, files: &[PathBuf]) -> Output {
    Command::new(validator())
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `files` validate against `version` with no warning, and
/// that exactly [`RESOURCES`] were validated.
fn assert_valid(version: &str, files: &[PathBuf]) {
    let out = validate(version, files);
    let report = text(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate {version}: {}\n{report}",
        out.status
    );
    let short = version.rsplit_once('.').map_or(version, |(v, _)| v);
    let mut passed: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("INFO"))
        .filter_map(|l| {
            let rest = l.split_once(" passed for resource ")?.1;
            let (resource, against) = rest.split_once(" against version ")?;
            assert_eq!(against, short, "{l}");
            Some(resource)
        })
        .collect();
    passed.sort_unstable();
    let mut expected = RESOURCES.to_vec();
    expected.sort_unstable();
    assert_eq!(passed, expected, "{report}");
    let noise: Vec<&str> = report.lines().filter(|l| !l.starts_with("INFO")).collect();
    assert!(noise.is_empty(), "kubernetes-validate {version}:\n{report}");
}

/// The YAML documents of `yaml`, as JSON, read by the venv's PyYAML.
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(venv().join("bin").join("python3"))
        .args([
            "-c",
            "import json, sys, yaml; \
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python3");
    child
        .stdin
        .take()
        .expect("python stdin")
        .write_all(yaml.as_bytes())
        .expect("write the YAML");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "PyYAML: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("PyYAML's JSON")
}

/// `kubectl kustomize packaging/kubernetes`.
fn kustomized() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(manifests_dir())
        .output()
        .expect("run kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize: {}", text(&out));
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

fn resource<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {docs:?}");
    found[0]
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is no string in {v}"))
}

#[test]
fn manifests_and_kustomize_output_validate_in_strict_mode() {
    skip_unless!(have_validator(), "{NO_VALIDATOR}");
    skip_unless!(
        have_kubectl(),
        "needs kubectl for kustomize (Debian package kubernetes-client)"
    );
    let dir = manifests_dir();
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|m| dir.join(m)).collect();
    let rendered = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(rendered.path(), kustomized()).expect("write the kustomize output");
    for version in KUBERNETES_VERSIONS {
        assert_valid(version, &files);
        assert_valid(version, &[rendered.path().to_owned()]);
    }
    // The kustomization lists every manifest in the directory.
    let mut listed: Vec<String> = fs::read_dir(&dir)
        .expect("packaging/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    listed.sort_unstable();
    let mut expected: Vec<String> = MANIFESTS.iter().map(|m| m.to_string()).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected, "a manifest missing from MANIFESTS");
}

#[test]
fn broken_manifests_are_rejected() {
    skip_unless!(have_validator(), "{NO_VALIDATOR}");
    let daemonset =
        fs::read_to_string(manifests_dir().join("daemonset.yaml")).expect("daemonset.yaml");
    let tmp = tempfile::tempdir().expect("temp dir");
    let broken = |name: &str, from: &str, to: &str| -> PathBuf {
        assert!(
            daemonset.contains(from),
            "{from:?} is not in daemonset.yaml"
        );
        let path = tmp.path().join(name);
        fs::write(&path, daemonset.replacen(from, to, 1)).expect("write a broken copy");
        path
    };
    let cases = [
        // A misspelt field: only strict mode refuses it (Kubernetes would
        // drop it silently, and the pod would share the host's PIDs if it
        // was meant the other way).
        (
            broken("misspelt.yaml", "hostPID: false", "hostPid: false"),
            "'hostPid' was unexpected",
        ),
        (
            broken(
                "wrong-type.yaml",
                "containerPort: 9477",
                "containerPort: \"9477\"",
            ),
            "is not of type 'integer'",
        ),
        // A required field missing (the container's name). Enum values
        // (mountPropagation: HostToContainr) are not in the published
        // schemas: kubernetes-validate passes them, the API server would not.
        (
            broken(
                "no-name.yaml",
                "- name: enforcer\n          image:",
                "- image:",
            ),
            "'name' is a required property",
        ),
        (
            broken("bad-yaml.yaml", "  template:\n", "  template:\n bad: [\n"),
            "Couldn't parse YAML",
        ),
    ];
    for (file, why) in &cases {
        let out = validate(
            KUBERNETES_VERSIONS[KUBERNETES_VERSIONS.len() - 1],
            std::slice::from_ref(file),
        );
        let report = text(&out);
        assert!(
            !out.status.success(),
            "{} validated:\n{report}",
            file.display()
        );
        assert!(report.contains(why), "{}: {report}", file.display());
    }
}

#[test]
fn configmap_config_passes_config_check_and_matches_the_daemonset() {
    skip_unless!(
        have_validator(),
        "{NO_VALIDATOR} (its PyYAML reads the manifests)"
    );
    let dir = manifests_dir();
    let read = |name: &str| fs::read_to_string(dir.join(name)).expect("a manifest");
    let configmap = yaml_docs(&read("configmap.yaml"));
    let toml = str_at(resource(&configmap, "ConfigMap"), "/data/enforcer.toml");

    // `enforcer config check` on the ConfigMap's text, with the node's
    // database swapped for a small one (the rest is checked as shipped).
    const NODE_DB: &str = "/usr/share/GeoIP/GeoLite2-Country.mmdb";
    assert_eq!(toml.matches(NODE_DB).count(), 1, "{toml}");
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = tmp.path().join("test.csv");
    fs::write(&db, "198.51.100.0/24,DE\n2001:db8::/32,US\n").expect("write the test database");
    let config_path = tmp.path().join("enforcer.toml");
    fs::write(
        &config_path,
        toml.replace(NODE_DB, &db.display().to_string()),
    )
    .expect("write the config");
    let out = Command::new(enforcer_binary())
        .args(["config", "check", "--config"])
        .arg(&config_path)
        .output()
        .expect("run enforcer config check");
    let report = text(&out);
    assert!(out.status.success(), "config check: {report}");
    assert!(report.lines().any(|l| l == "ok"), "{report}");
    assert!(report.contains("mode:     observe"), "{report}");
    for entry in ["kubepods.slice", "kubepods"] {
        let (spaced, last) = (format!("/{entry} "), format!("/{entry}"));
        assert!(
            report
                .lines()
                .filter(|l| l.starts_with("scope:"))
                .any(|l| l.contains(&spaced) || l.ends_with(&last)),
            "scope entry {entry} in\n{report}"
        );
    }

    // The shipped text as the agent reads it, for the cross-checks.
    let shipped = tmp.path().join("shipped.toml");
    fs::write(&shipped, toml).expect("write the shipped config");
    let config = Config::load(&shipped).expect("the ConfigMap's config parses");
    assert_eq!(
        config.scope,
        Scope::Cgroups(vec!["kubepods.slice".into(), "kubepods".into()])
    );

    let docs = yaml_docs(&read("daemonset.yaml"));
    let ds = resource(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| (str_at(m, "/name"), str_at(m, "/mountPath")))
        .collect();
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    // The path inside the container that `path` lies on, and that mount's
    // volume.
    let mount_of = |path: &Path| -> (&str, &Value) {
        let (name, at) = mounts
            .iter()
            .filter(|(_, at)| path.starts_with(at))
            .max_by_key(|(_, at)| at.len())
            .unwrap_or_else(|| panic!("{} is on no volume of {mounts:?}", path.display()));
        (at, volume(name))
    };

    // --config names the ConfigMap's key where the ConfigMap is mounted.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| Path::new(w[1]))
        .expect("--config in the args");
    let (at, vol) = mount_of(config_arg);
    assert_eq!(
        str_at(vol, "/configMap/name"),
        str_at(resource(&configmap, "ConfigMap"), "/metadata/name")
    );
    assert_eq!(config_arg, Path::new(at).join("enforcer.toml"));

    // The metrics port: the config's, the container's, the probes', the
    // scrape annotations'.
    let port = config.metrics_listen.port();
    assert!(
        config.metrics_listen.ip().is_unspecified(),
        "probes reach the pod's address"
    );
    let ports = c["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"], port);
    assert_eq!(ports[0]["name"], "metrics");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());

    // Everything the agent keeps beyond the pod is on a host path: pins,
    // the control socket and runtime modes, the audit log and events, the
    // cgroup2 hierarchy, the database; the config is the ConfigMap.
    let host_path = |path: &Path| -> String {
        let (at, vol) = mount_of(path);
        let host = str_at(vol, "/hostPath/path");
        assert_eq!(
            host,
            at,
            "{} is mounted where the host has it",
            path.display()
        );
        host.to_owned()
    };
    host_path(&config.pin_dir);
    host_path(&config.run_dir);
    host_path(&config.control.socket);
    host_path(Path::new("/sys/fs/cgroup"));
    for source in &config.sources {
        host_path(&source.path);
    }
    host_path(config.audit.file.as_deref().expect("the audit log is on"));
    host_path(config.events.file.as_deref().expect("an events file"));
    // Only the run and log directories are written; everything else that
    // may be read-only is.
    for (name, at) in &mounts {
        let m = c["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == *name))
            .expect("the mount");
        let writable = [
            "/sys/fs/bpf",
            "/run/egress-enforcer",
            "/var/log/egress-enforcer",
        ];
        assert_eq!(
            m["readOnly"].as_bool().unwrap_or(false),
            !writable.contains(at),
            "{name} at {at}"
        );
    }

    // The capabilities are those of docs/capabilities.md, and nothing is
    // privileged.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "SETPCAP"])
    );
    assert!(
        config.control.admin_group.is_none(),
        "that would need CAP_CHOWN"
    );

    // The image tag is this release's.
    let kustomization = yaml_docs(&read("kustomization.yaml"));
    let images = kustomization[0]["images"].as_array().expect("images");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["newTag"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        str_at(c, "/image"),
        format!("egress-enforcer:{}", env!("CARGO_PKG_VERSION"))
    );
}
