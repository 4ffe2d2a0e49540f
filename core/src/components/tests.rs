//! Tests of [`super::load`] and [`super::validate`] on small packs written to temp dirs.

use std::fs;
use std::path::Path;

use super::ComponentKind::{self, *};
use super::{Issue, LoadedPack, Strictness, is_builtin_runner, load, validate, validate_with};
use crate::packfs::{PackDir, PackReadLimits};

fn write_pack(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let path = dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

/// load + validate, with `packs` existing elsewhere and `comps` their components.
fn run_with(
    dir: &Path,
    pack: &str,
    packs: &[&str],
    comps: &[(ComponentKind, &str)],
    strictness: Strictness,
) -> LoadedPack {
    let dir = PackDir::open(dir).unwrap();
    let mut loaded = load(&dir, pack, PackReadLimits::default().component());
    let pack_exists = |p: &str| packs.contains(&p);
    let component_exists = |k: ComponentKind, r: &str| comps.contains(&(k, r));
    validate_with(
        &mut loaded,
        &dir,
        pack,
        &pack_exists,
        &component_exists,
        strictness,
    );
    loaded
}

/// Strict: component problems are errors and every component stays listed, so tests of
/// what `load` and `validate` find see all of it.
fn run(dir: &Path, pack: &str, packs: &[&str], comps: &[(ComponentKind, &str)]) -> LoadedPack {
    run_with(dir, pack, packs, comps, Strictness::Strict)
}

/// The default: component problems are warnings and drop their component.
fn lenient(dir: &Path, pack: &str, packs: &[&str], comps: &[(ComponentKind, &str)]) -> LoadedPack {
    let dir = PackDir::open(dir).unwrap();
    let mut loaded = load(&dir, pack, PackReadLimits::default().component());
    let pack_exists = |p: &str| packs.contains(&p);
    let component_exists = |k: ComponentKind, r: &str| comps.contains(&(k, r));
    // `validate` is the lenient mode.
    validate(&mut loaded, &dir, pack, &pack_exists, &component_exists);
    loaded
}

fn check(dir: &Path, pack: &str) -> LoadedPack {
    run(dir, pack, &[], &[])
}

#[track_caller]
fn assert_issue(issues: &[Issue], file: &str, needle: &str) {
    assert!(
        issues
            .iter()
            .any(|i| i.file == file && i.message.contains(needle)),
        "no issue for {file} containing {needle:?} in {issues:#?}"
    );
}

fn refs(loaded: &LoadedPack, kind: ComponentKind) -> Vec<&str> {
    loaded.of_kind(kind).map(|c| c.r#ref.as_str()).collect()
}

fn counts(loaded: &LoadedPack) -> Vec<(ComponentKind, u32)> {
    ComponentKind::ALL
        .iter()
        .map(|k| (*k, loaded.count(*k)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

// ----- full packs ---------------------------------------------------------------------

const ATTUNE_PACK: &[(&str, &str)] = &[
    (
        "permission_sets/operators.yaml",
        "ref: demo.operators\nlabel: Operators\ngrants:\n  - {resource: actions, actions: [execute]}\n",
    ),
    (
        "runtimes/ruby.yaml",
        "ref: demo.ruby\nname: Ruby\naliases: [ruby]\nexecution_config:\n  interpreter: {binary: ruby, args: [], file_extension: .rb}\n",
    ),
    (
        "triggers/alert.yaml",
        "ref: demo.alert\nlabel: Alert\ntype: system\nparameters: {}\noutput:\n  severity: {type: string}\n",
    ),
    (
        "actions/echo.yaml",
        "ref: demo.echo\nlabel: Echo\ndescription: Echo a message\nrunner_type: shell\nentry_point: echo.sh\nparameter_delivery: STDIN\nparameter_format: json\noutput_format: json\ntimeout_seconds: 60\nparameters:\n  message: {type: string, required: true}\nunknown_key: kept\n",
    ),
    ("actions/echo.sh", "#!/bin/sh\ncat\n"),
    (
        "actions/deploy.yaml",
        "ref: demo.deploy\nlabel: Deploy\nworkflow_file: workflows/deploy.workflow.yaml\n",
    ),
    (
        "actions/workflows/deploy.workflow.yaml",
        "version: \"1.0.0\"\ntasks:\n  - name: run\n    action: demo.echo\n    input: {message: hi}\n  - name: fan\n    type: parallel\n    tasks:\n      - {name: inner, action: echo}\n",
    ),
    (
        "actions/rb.yaml",
        "ref: rb\nrunner_type: demo.ruby\nentry_point: scripts/rb.rb\n",
    ),
    ("actions/scripts/rb.rb", "puts 1\n"),
    (
        "workflows/nightly.yaml",
        "ref: demo.nightly\nversion: \"1.0\"\ntasks:\n  - {name: a, action: echo}\n",
    ),
    (
        "queues/jobs.yaml",
        "ref: demo.jobs\ndispatch_action: demo.echo\n",
    ),
    (
        "policies/limit_echo.yaml",
        "ref: limit_echo\naction_ref: echo\nconcurrency: {limit: 2, method: enqueue, parameters: [message]}\nrate_limit: {max_executions: 60, window_seconds: 60}\n",
    ),
    (
        "rules/on_alert.yaml",
        "ref: demo.on_alert\ntrigger_ref: alert\naction_ref: demo.echo\naction_params: {message: alert}\npermission_set_refs: [operators]\n",
    ),
    (
        "sensors/watcher.yaml",
        "ref: demo.watcher\nrunner_type: native\nentry_point: watcher-bin\ntrigger_types: [demo.alert]\n",
    ),
    ("README.md", "# demo\n"),
];

#[test]
fn attune_pack_loads_with_exact_counts_and_refs() {
    let dir = write_pack(ATTUNE_PACK);
    let loaded = check(dir.path(), "demo");
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    assert_eq!(
        counts(&loaded),
        vec![
            (PermissionSet, 1),
            (Runtime, 1),
            (Trigger, 1),
            (Action, 3),
            (Workflow, 2),
            (Queue, 1),
            (Policy, 1),
            (Rule, 1),
            (Sensor, 1),
        ]
    );
    assert_eq!(
        refs(&loaded, Action),
        ["demo.deploy", "demo.echo", "demo.rb"]
    );
    assert_eq!(refs(&loaded, Workflow), ["demo.deploy", "demo.nightly"]);
    assert_eq!(refs(&loaded, Policy), ["demo.limit_echo"]);
    // Components come in registration order.
    let kinds: Vec<_> = loaded.components.iter().map(|c| c.kind).collect();
    let mut sorted = kinds.clone();
    sorted.sort_by_key(|k| k.order());
    assert_eq!(kinds, sorted);

    let echo = loaded.get(Action, "demo.echo").unwrap();
    assert_eq!(echo.file, "actions/echo.yaml");
    assert_eq!(echo.name, "echo");
    assert_eq!(echo.label.as_deref(), Some("Echo"));
    assert_eq!(echo.description.as_deref(), Some("Echo a message"));
    assert_eq!(echo.definition["parameter_delivery"], "stdin");
    assert_eq!(echo.definition["unknown_key"], "kept");

    let deploy = loaded.get(Action, "demo.deploy").unwrap();
    assert_eq!(deploy.definition["runner_type"], "shell");
    assert_eq!(deploy.definition["parameter_format"], "json");
    assert_eq!(deploy.definition["output_format"], "text");
    assert_eq!(deploy.references[0].kind, Workflow);
    assert_eq!(deploy.references[0].r#ref, "demo.deploy");
    assert_eq!(deploy.references[0].key, "workflow_file");
    let wf = loaded.get(Workflow, "demo.deploy").unwrap();
    assert_eq!(wf.file, "actions/workflows/deploy.workflow.yaml");
    assert_eq!(wf.label.as_deref(), Some("Deploy"));
    assert_eq!(wf.definition["action_ref"], "demo.deploy");
    let task_refs: Vec<_> = wf
        .references
        .iter()
        .map(|r| (r.r#ref.as_str(), r.key.as_str()))
        .collect();
    assert_eq!(
        task_refs,
        [
            ("demo.echo", "tasks.run.action"),
            ("demo.echo", "tasks.fan.tasks.inner.action")
        ]
    );

    let rb = loaded.get(Action, "demo.rb").unwrap();
    assert_eq!(rb.references[0].kind, Runtime);
    assert_eq!(rb.references[0].r#ref, "demo.ruby");

    let rule = loaded.get(Rule, "demo.on_alert").unwrap();
    assert_eq!(rule.definition["trigger_ref"], "demo.alert");
    assert_eq!(rule.definition["enabled"], true);
    let kinds: Vec<_> = rule
        .references
        .iter()
        .map(|r| (r.kind, r.key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Trigger, "trigger_ref"),
            (Action, "action_ref"),
            (PermissionSet, "permission_set_refs")
        ]
    );
    let policy = loaded.get(Policy, "demo.limit_echo").unwrap();
    assert_eq!(policy.definition["action_ref"], "demo.echo");
    assert_eq!(policy.definition["ref"], "demo.limit_echo");
    let runtime = loaded.get(Runtime, "demo.ruby").unwrap();
    assert_eq!(runtime.name, "ruby");
}

const ST2_PACK: &[(&str, &str)] = &[
    ("pack.yaml", "name: st2demo\nversion: 1.0.0\n"),
    (
        "actions/run.yaml",
        "---\nname: run\npack: st2demo\nrunner_type: local-shell-script\nentry_point: run.sh\nenabled: true\nparameters:\n  path: {type: string, required: true}\n  sudo: {immutable: true}\n",
    ),
    ("actions/run.sh", "#!/bin/sh\nls \"$1\"\n"),
    (
        "actions/cmd.yml",
        "name: cmd\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {default: uptime, immutable: true}\n",
    ),
    (
        "actions/flow.yaml",
        "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\nparameters:\n  path: {type: string}\n",
    ),
    (
        "actions/workflows/flow.yaml",
        "version: 1.0\ninput: [path]\ntasks:\n  first:\n    action: st2demo.run path=<% ctx().path %>\n    next:\n      - when: <% succeeded() %>\n        do: second\n  second:\n    action: core.local cmd=\"echo done\"\n  third:\n    action: <% ctx().dynamic %>\n",
    ),
    ("actions/workflows/orphan.yaml", "version: 1.0\ntasks: {}\n"),
    ("actions/python_action.py", "print(1)\n"),
    (
        "sensors/watch.yaml",
        "class_name: WatchSensor\nentry_point: watch.py\ndescription: Watches files\ntrigger_types:\n  - name: file_created\n    description: A file was created\n    payload_schema:\n      type: object\n      properties: {path: {type: string}}\n  - name: file_deleted\n    parameters_schema: {type: object}\n",
    ),
    ("sensors/watch.py", "class WatchSensor: pass\n"),
    (
        "triggers/manual.yaml",
        "name: manual\npayload_schema: {type: object}\n",
    ),
    (
        "rules/on_create.yaml",
        "name: on_create\npack: st2demo\ndescription: Run the flow\nenabled: true\ntrigger:\n  type: st2demo.file_created\n  parameters: {}\ncriteria:\n  trigger.path:\n    type: matchregex\n    pattern: \".*\\\\.txt$\"\naction:\n  ref: st2demo.flow\n  parameters:\n    path: \"{{ trigger.path }}\"\n",
    ),
    (
        "rules/timer.yaml",
        "name: every_minute\npack: st2demo\ntrigger:\n  type: core.st2.IntervalTimer\n  parameters: {unit: minutes, delta: 1}\naction:\n  ref: core.local\n  parameters: {cmd: date}\n",
    ),
    (
        "policies/flow_concurrency.yaml",
        "name: flow.concurrency\ndescription: One at a time\nenabled: true\nresource_ref: st2demo.flow\npolicy_type: action.concurrency\nparameters: {threshold: 1, action: delay}\n",
    ),
];

#[test]
fn stackstorm_pack_loads_with_exact_counts_and_refs() {
    let dir = write_pack(ST2_PACK);
    let loaded = check(dir.path(), "st2demo");
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert_eq!(
        counts(&loaded),
        vec![
            (Trigger, 3),
            (Action, 3),
            (Workflow, 1),
            (Policy, 1),
            (Rule, 2),
            (Sensor, 1),
        ]
    );
    assert_eq!(
        refs(&loaded, Action),
        ["st2demo.cmd", "st2demo.flow", "st2demo.run"]
    );
    assert_eq!(
        refs(&loaded, Trigger),
        [
            "st2demo.manual",
            "st2demo.file_created",
            "st2demo.file_deleted"
        ]
    );
    assert_eq!(refs(&loaded, Workflow), ["st2demo.flow"]);
    assert_eq!(
        refs(&loaded, Rule),
        ["st2demo.on_create", "st2demo.every_minute"]
    );
    assert_eq!(refs(&loaded, Policy), ["st2demo.flow.concurrency"]);
    assert_eq!(
        loaded.get(Action, "st2demo.cmd").unwrap().file,
        "actions/cmd.yml"
    );

    let flow = loaded.get(Workflow, "st2demo.flow").unwrap();
    assert_eq!(flow.file, "actions/workflows/flow.yaml");
    let task_refs: Vec<_> = flow
        .references
        .iter()
        .map(|r| (r.r#ref.as_str(), r.key.as_str()))
        .collect();
    assert_eq!(
        task_refs,
        [
            ("st2demo.run", "tasks.first.action"),
            ("core.local", "tasks.second.action")
        ]
    );
    let action = loaded.get(Action, "st2demo.flow").unwrap();
    assert_eq!(action.references[0].key, "entry_point");

    let sensor = loaded.get(Sensor, "st2demo.WatchSensor").unwrap();
    assert_eq!(sensor.definition["runner_type"], "python");
    assert_eq!(sensor.references.len(), 2);
    let created = loaded.get(Trigger, "st2demo.file_created").unwrap();
    assert_eq!(created.file, "sensors/watch.yaml");
    assert_eq!(created.definition["sensor_ref"], "st2demo.WatchSensor");
    assert_eq!(created.definition["output"]["type"], "object");
    assert_eq!(created.description.as_deref(), Some("A file was created"));
    let deleted = loaded.get(Trigger, "st2demo.file_deleted").unwrap();
    assert_eq!(deleted.definition["parameters"]["type"], "object");

    let rule = loaded.get(Rule, "st2demo.on_create").unwrap();
    assert_eq!(rule.definition["trigger_ref"], "st2demo.file_created");
    assert_eq!(rule.definition["action_ref"], "st2demo.flow");
    assert_eq!(
        rule.definition["action_params"]["path"],
        "{{ trigger.path }}"
    );
    assert_eq!(
        rule.definition["criteria"]["trigger.path"]["type"],
        "matchregex"
    );
    let keys: Vec<_> = rule.references.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["trigger.type", "action.ref"]);

    let policy = loaded.get(Policy, "st2demo.flow.concurrency").unwrap();
    assert_eq!(policy.definition["action_ref"], "st2demo.flow");
    assert_eq!(policy.name, "flow.concurrency");

    // Warnings: the orphan workflow, names Attune would not store, and pack `core`
    // (absent).
    assert_issue(
        &loaded.warnings,
        "actions/workflows/orphan.yaml",
        "not referenced by any action",
    );
    assert_issue(
        &loaded.warnings,
        "policies/flow_concurrency.yaml",
        "name 'flow.concurrency' contains uppercase letters or dots",
    );
    assert_issue(
        &loaded.warnings,
        "rules/timer.yaml",
        "rule st2demo.every_minute uses trigger core.st2.IntervalTimer (trigger.type) from pack \
         'core', which is neither in this batch nor installed",
    );
    assert_issue(
        &loaded.warnings,
        "rules/timer.yaml",
        "uses action core.local (action.ref) from pack 'core'",
    );
    assert_issue(
        &loaded.warnings,
        "actions/workflows/flow.yaml",
        "uses action core.local (tasks.second.action) from pack 'core'",
    );
    assert_issue(
        &loaded.warnings,
        "sensors/watch.yaml",
        "sensor name 'WatchSensor' contains uppercase letters",
    );
    assert_eq!(loaded.warnings.len(), 6, "{:#?}", loaded.warnings);
}

#[test]
fn stackstorm_core_builtins_are_never_errors() {
    let dir = write_pack(ST2_PACK);
    // `core` exists but provides none of the StackStorm built-ins.
    let loaded = run(dir.path(), "st2demo", &["core"], &[]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert_issue(
        &loaded.warnings,
        "rules/timer.yaml",
        "uses the StackStorm built-in trigger core.st2.IntervalTimer (trigger.type), which pack \
         'core' does not provide",
    );
    // And with them installed, no warnings about them at all.
    let loaded = run(
        dir.path(),
        "st2demo",
        &["core"],
        &[(Trigger, "core.st2.IntervalTimer"), (Action, "core.local")],
    );
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert!(
        !loaded.warnings.iter().any(|w| w.message.contains("core.")),
        "{:#?}",
        loaded.warnings
    );
}

// ----- files ------------------------------------------------------------------------------

#[test]
fn yaml_error_in_one_file_does_not_hide_the_others() {
    let dir = write_pack(&[
        ("actions/a.yaml", "ref: p.a\nrunner_type: local-shell-cmd\n"),
        (
            "actions/b.yaml",
            "ref: p.b\nparameters: [unclosed\nrunner_type: noop\n",
        ),
        ("actions/c.yaml", "ref: p.c\nrunner_type: noop\n"),
        ("triggers/t.yaml", "ref: p.t\n"),
        ("rules/r.yaml", "ref: r\ntrigger_ref: t\naction_ref: a\n"),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(refs(&loaded, Action), ["p.a", "p.c"]);
    assert_eq!(loaded.count(Rule), 1);
    assert_eq!(loaded.errors.len(), 1, "{:#?}", loaded.errors);
    assert_issue(&loaded.errors, "actions/b.yaml", "invalid YAML: ");
    assert_issue(&loaded.errors, "actions/b.yaml", "line 3");
}

#[test]
fn empty_and_non_mapping_files_are_errors() {
    let dir = write_pack(&[
        ("actions/empty.yaml", ""),
        ("actions/list.yaml", "- a\n- b\n"),
        ("actions/multi.yaml", "ref: p.x\n---\nref: p.y\n"),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(loaded.count(Action), 0);
    assert_issue(&loaded.errors, "actions/empty.yaml", "the file is empty");
    assert_issue(
        &loaded.errors,
        "actions/list.yaml",
        "expected a mapping of keys at the top level, found a list",
    );
    assert_issue(
        &loaded.errors,
        "actions/multi.yaml",
        "more than one document",
    );
}

#[cfg(unix)]
#[test]
fn links_inside_the_pack_are_read_as_what_they_point_to() {
    let dir = write_pack(&[
        ("actions/ok.yaml", "ref: p.ok\nrunner_type: noop\n"),
        (
            "shared/run.yaml",
            "ref: p.run\nrunner_type: local-shell-script\nentry_point: run.sh\n",
        ),
        ("shared/run.sh", "#!/bin/sh\n"),
        ("shared/gone.yaml", "ref: p.gone\nrunner_type: noop\n"),
    ]);
    let d = dir.path();
    std::os::unix::fs::symlink("../shared/run.yaml", d.join("actions/run.yaml")).unwrap();
    std::os::unix::fs::symlink("../shared/run.sh", d.join("actions/run.sh")).unwrap();
    std::os::unix::fs::symlink("../shared/missing.yaml", d.join("actions/dangling.yaml")).unwrap();
    std::os::unix::fs::symlink("../../gone.yaml", d.join("actions/escaping.yaml")).unwrap();
    let loaded = check(d, "p");
    assert_eq!(
        refs(&loaded, Action),
        ["p.ok", "p.run"],
        "{:#?}",
        loaded.errors
    );
    assert_issue(&loaded.errors, "actions/dangling.yaml", "points to nothing");
    assert_issue(&loaded.errors, "actions/escaping.yaml", "leaves the pack");
    assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_pack_are_refused() {
    let outside = write_pack(&[("secret.yaml", "ref: p.secret\nrunner_type: noop\n")]);
    let dir = write_pack(&[
        ("actions/ok.yaml", "ref: p.ok\nrunner_type: noop\n"),
        (
            "actions/wf.yaml",
            "ref: p.wf\nworkflow_file: linked/flow.yaml\n",
        ),
        ("actions/run.yaml", "ref: p.run\nentry_point: run.sh\n"),
    ]);
    let d = dir.path();
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        d.join("actions/evil.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("actions/linked")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.yaml"), d.join("actions/run.sh"))
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("rules")).unwrap();
    let loaded = check(d, "p");
    assert_eq!(refs(&loaded, Action), ["p.ok", "p.run", "p.wf"]);
    assert_eq!(loaded.count(Workflow), 0);
    assert_issue(&loaded.errors, "actions/evil.yaml", "is a symbolic link to");
    assert_issue(&loaded.errors, "actions/evil.yaml", "that leaves the pack");
    assert_issue(&loaded.errors, "actions/linked", "that leaves the pack");
    assert_issue(&loaded.errors, "rules", "that leaves the pack");
    assert_issue(
        &loaded.errors,
        "actions/run.yaml",
        "entry_point 'run.sh': 'actions/run.sh' is a symbolic link to",
    );
    assert_eq!(loaded.errors.len(), 4, "{:#?}", loaded.errors);
}

#[test]
fn fifos_and_sockets_are_refused_without_blocking() {
    let dir = write_pack(&[
        ("actions/ok.yaml", "ref: p.ok\nrunner_type: noop\n"),
        ("actions/run.yaml", "ref: p.run\nentry_point: pipe.sh\n"),
    ]);
    let d = dir.path();
    for name in ["actions/fifo.yaml", "actions/pipe.sh", "rules"] {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join(name),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
    let _socket = std::os::unix::net::UnixListener::bind(d.join("actions/sock.yaml")).unwrap();
    let started = std::time::Instant::now();
    let loaded = check(d, "p");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(refs(&loaded, Action), ["p.ok", "p.run"]);
    assert_issue(&loaded.errors, "actions/fifo.yaml", "is a fifo");
    assert_issue(&loaded.errors, "actions/sock.yaml", "is a socket");
    assert_issue(&loaded.errors, "rules", "is not a directory");
    assert_issue(
        &loaded.errors,
        "actions/run.yaml",
        "entry_point 'pipe.sh' (actions/pipe.sh) is not a regular file",
    );
    assert_eq!(loaded.errors.len(), 4, "{:#?}", loaded.errors);
}

#[test]
fn large_non_utf8_hidden_and_nested_files() {
    let big = format!("ref: p.big\ndescription: \"{}\"\n", "x".repeat(1024 * 1024));
    let dir = write_pack(&[
        ("actions/big.yaml", big.as_str()),
        ("actions/.hidden.yaml", "ref: p.hidden\n"),
        ("actions/nested/deep.yaml", "ref: p.deep\n"),
        ("actions/notes.txt", "ref: p.txt\n"),
        ("actions/ok.yaml", "ref: p.ok\nrunner_type: noop\n"),
    ]);
    fs::write(
        dir.path().join("actions/latin1.yaml"),
        b"ref: p.l\ndescription: caf\xe9\n",
    )
    .unwrap();
    fs::create_dir(dir.path().join("actions/dir.yaml")).unwrap();
    let loaded = check(dir.path(), "p");
    assert_eq!(refs(&loaded, Action), ["p.ok"]);
    assert_issue(
        &loaded.errors,
        "actions/big.yaml",
        "is larger than 1048576 bytes, the limit for a component file (setting \
         pack_files.max_component_bytes)",
    );
    assert_issue(&loaded.errors, "actions/latin1.yaml", "is not valid UTF-8");
    assert_issue(
        &loaded.warnings,
        "actions/.hidden.yaml",
        "hidden file; skipped",
    );
    assert_issue(
        &loaded.warnings,
        "actions/dir.yaml",
        "is a directory; skipped",
    );
    assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
}

// ----- refs -----------------------------------------------------------------------------

#[test]
fn refs_are_qualified_and_checked() {
    let dir = write_pack(&[
        ("actions/other.yaml", "ref: core.echo\nrunner_type: noop\n"),
        ("actions/bare.yaml", "ref: bare\nrunner_type: noop\n"),
        ("actions/named.yaml", "name: named\nrunner_type: noop\n"),
        ("actions/stem.yaml", "runner_type: noop\n"),
        (
            "actions/bad.yaml",
            "ref: \"p.has space\"\nrunner_type: noop\n",
        ),
        (
            "actions/wrongpack.yaml",
            "name: w\npack: other\nrunner_type: noop\n",
        ),
        ("actions/upper.yaml", "name: DoIt\nrunner_type: noop\n"),
        ("actions/typed.yaml", "ref: [p, x]\n"),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(
        refs(&loaded, Action),
        // File order: bare, named, stem, upper, wrongpack.
        ["p.bare", "p.named", "p.stem", "p.DoIt", "p.w"]
    );
    assert_issue(
        &loaded.errors,
        "actions/other.yaml",
        "ref 'core.echo' belongs to pack 'core', not 'p': a pack may only define its own \
         components",
    );
    assert_issue(
        &loaded.errors,
        "actions/bad.yaml",
        "invalid action name 'has space'",
    );
    assert_issue(
        &loaded.errors,
        "actions/wrongpack.yaml",
        "pack: 'other' is not this pack ('p')",
    );
    assert_issue(
        &loaded.errors,
        "actions/typed.yaml",
        "ref: expected a string, found a list",
    );
    assert_issue(
        &loaded.warnings,
        "actions/stem.yaml",
        "no `ref` or `name`; using the file name: action p.stem",
    );
    assert_issue(
        &loaded.warnings,
        "actions/upper.yaml",
        "name 'DoIt' contains uppercase",
    );
    assert_eq!(loaded.errors.len(), 4, "{:#?}", loaded.errors);
}

#[test]
fn duplicate_refs_name_both_files() {
    let dir = write_pack(&[
        ("actions/a.yaml", "ref: p.same\nrunner_type: noop\n"),
        ("actions/b.yaml", "name: same\nrunner_type: noop\n"),
        ("triggers/t1.yaml", "ref: p.t\n"),
        ("triggers/t2.yaml", "ref: t\n"),
        (
            "rules/r.yaml",
            "ref: p.same\ntrigger_ref: t\naction_ref: same\n",
        ),
        (
            "sensors/s.yaml",
            "ref: p.s\nentry_point: bin\ntrigger_types:\n  - {name: t}\n  - {name: u}\n",
        ),
        (
            "sensors/s2.yaml",
            "ref: p.s2\nentry_point: bin\ntrigger_types:\n  - {name: u}\n",
        ),
    ]);
    let loaded = check(dir.path(), "p");
    assert_issue(
        &loaded.errors,
        "actions/b.yaml",
        "duplicate action ref 'p.same': already defined in actions/a.yaml",
    );
    assert_issue(
        &loaded.errors,
        "triggers/t2.yaml",
        "duplicate trigger ref 'p.t': already defined in triggers/t1.yaml",
    );
    // Same ref, different kinds: fine. Sensor-declared triggers are deduplicated.
    assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
    assert_eq!(loaded.count(Action), 1);
    assert_eq!(loaded.count(Rule), 1);
    assert_eq!(refs(&loaded, Trigger), ["p.t", "p.u"]);
    assert_eq!(loaded.get(Trigger, "p.t").unwrap().file, "triggers/t1.yaml");
    assert_eq!(loaded.get(Trigger, "p.u").unwrap().file, "sensors/s.yaml");
}

// ----- actions ------------------------------------------------------------------------------

#[test]
fn action_enum_values_and_types_are_errors() {
    let dir = write_pack(&[
        (
            "actions/env.yaml",
            "ref: p.env\nrunner_type: noop\nparameter_delivery: env\n",
        ),
        (
            "actions/fmt.yaml",
            "ref: p.fmt\nrunner_type: noop\nparameter_format: xml\noutput_format: 3\n",
        ),
        (
            "actions/timeout.yaml",
            "ref: p.timeout\nrunner_type: noop\ntimeout_seconds: 0\nenabled: \"yes\"\nparameters: [a]\n",
        ),
        (
            "actions/aliases.yaml",
            "ref: p.aliases\nrunner_type: noop\ntimeout: 30\noutput_schema: {x: {type: string}}\nreference_visibility: Secret\n",
        ),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(loaded.count(Action), 4);
    assert_issue(
        &loaded.errors,
        "actions/env.yaml",
        "parameter_delivery: 'env' is not allowed (allowed: stdin, file); Attune's documentation \
         mentions 'env', but its database rejects it",
    );
    assert_issue(
        &loaded.errors,
        "actions/fmt.yaml",
        "parameter_format: 'xml' is not allowed (allowed: dotenv, json, yaml)",
    );
    assert_issue(
        &loaded.errors,
        "actions/fmt.yaml",
        "output_format: 3 is not allowed (allowed: text, json, yaml, jsonl)",
    );
    assert_issue(
        &loaded.errors,
        "actions/timeout.yaml",
        "timeout_seconds: expected a positive whole number of seconds, found 0",
    );
    assert_issue(
        &loaded.errors,
        "actions/timeout.yaml",
        "enabled: expected true or false, found 'yes'",
    );
    assert_issue(
        &loaded.errors,
        "actions/timeout.yaml",
        "parameters: expected a mapping, found a list",
    );
    assert_issue(
        &loaded.errors,
        "actions/aliases.yaml",
        "reference_visibility: 'Secret' is not allowed (allowed: public, private, restricted)",
    );
    assert_eq!(loaded.errors.len(), 7, "{:#?}", loaded.errors);
    let aliases = loaded.get(Action, "p.aliases").unwrap();
    assert_eq!(aliases.definition["timeout_seconds"], 30);
    assert_eq!(aliases.definition["output"]["x"]["type"], "string");
}

#[test]
fn entry_points_are_checked_per_runner() {
    let dir = write_pack(&[
        (
            "actions/ok.yaml",
            "ref: p.ok\nrunner_type: python-script\nentry_point: ok.py\n",
        ),
        ("actions/ok.py", "print(1)\n"),
        (
            "actions/missing.yaml",
            "ref: p.missing\nentry_point: missing.sh\n",
        ),
        (
            "actions/none.yaml",
            "ref: p.none\nrunner_type: local-shell-script\n",
        ),
        (
            "actions/cmd.yaml",
            "ref: p.cmd\nrunner_type: local-shell-cmd\n",
        ),
        (
            "actions/http.yaml",
            "ref: p.http\nrunner_type: http-request\nentry_point: nowhere\n",
        ),
        (
            "actions/escape.yaml",
            "ref: p.escape\nentry_point: ../../etc/passwd\n",
        ),
        ("actions/abs.yaml", "ref: p.abs\nentry_point: /etc/passwd\n"),
        ("actions/dir.yaml", "ref: p.dir\nentry_point: lib\n"),
        ("actions/lib/x.sh", "true\n"),
        (
            "actions/inside.yaml",
            "ref: p.inside\nentry_point: ../scripts/x.sh\n",
        ),
        ("scripts/x.sh", "true\n"),
        ("actions/custom.yaml", "ref: p.custom\nrunner_type: Ruby\n"),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(loaded.count(Action), 10);
    // No runtime `p.Ruby`: an unknown runner (a component problem, an error when strict).
    assert_issue(
        &loaded.errors,
        "actions/custom.yaml",
        "runner_type: unknown runner 'Ruby': neither a runner of Attune or StackStorm nor a \
         runtime of this pack",
    );
    assert_issue(
        &loaded.errors,
        "actions/missing.yaml",
        "entry_point 'missing.sh' does not exist (looked for actions/missing.sh)",
    );
    assert_issue(
        &loaded.errors,
        "actions/none.yaml",
        "entry_point is required for runner_type 'local-shell-script'",
    );
    assert_issue(
        &loaded.errors,
        "actions/escape.yaml",
        "entry_point '../../etc/passwd' points outside the pack",
    );
    assert_issue(
        &loaded.errors,
        "actions/abs.yaml",
        "entry_point '/etc/passwd' must be a relative '/'-separated path inside the pack",
    );
    assert_issue(
        &loaded.errors,
        "actions/dir.yaml",
        "(actions/lib) is not a regular file",
    );
    assert_eq!(loaded.errors.len(), 6, "{:#?}", loaded.errors);
}

#[test]
fn workflow_files_are_checked_and_loaded_once() {
    let dir = write_pack(&[
        (
            "actions/a.yaml",
            "ref: p.a\nlabel: A\nrunner_type: orquesta\nentry_point: workflows/shared.yaml\n",
        ),
        (
            "actions/b.yaml",
            "ref: p.b\nworkflow_file: workflows/shared.yaml\n",
        ),
        (
            "actions/workflows/shared.yaml",
            "version: 1.0\ntasks:\n  t: {action: core.noop}\n",
        ),
        (
            "actions/escape.yaml",
            "ref: p.escape\nworkflow_file: ../../outside.yaml\n",
        ),
        (
            "actions/abs.yaml",
            "ref: p.abs\nworkflow_file: /tmp/x.yaml\n",
        ),
        (
            "actions/gone.yaml",
            "ref: p.gone\nrunner_type: action-chain\nentry_point: chains/gone.yaml\n",
        ),
        (
            "actions/noentry.yaml",
            "ref: p.noentry\nrunner_type: orquesta\n",
        ),
        // An actions/*.yaml used as a workflow is not an action.
        ("actions/c.yaml", "ref: p.c\nworkflow_file: graph.yaml\n"),
        (
            "actions/graph.yaml",
            "ref: p.graph\nchain:\n  - {name: one, ref: c}\n",
        ),
        // A standalone workflow that an action also references: one component.
        (
            "actions/d.yaml",
            "ref: p.d\nworkflow_file: ../workflows/std.yaml\n",
        ),
        (
            "workflows/std.yaml",
            "ref: p.std\nversion: \"1\"\ntasks: [{name: x, action: p.a}]\n",
        ),
        ("workflows/bad.yaml", "ref: p.bad\nversion: \"1\"\n"),
        (
            "workflows/nover.yaml",
            "ref: p.nover\ntasks: [{name: x, action: p.a}]\n",
        ),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(
        refs(&loaded, Action),
        [
            "p.a",
            "p.abs",
            "p.b",
            "p.c",
            "p.d",
            "p.escape",
            "p.gone",
            "p.noentry"
        ]
    );
    assert_eq!(
        refs(&loaded, Workflow),
        ["p.a", "p.graph", "p.std", "p.bad", "p.nover"]
    );
    let b = loaded.get(Action, "p.b").unwrap();
    assert_eq!(b.references[0].r#ref, "p.a");
    let shared = loaded.get(Workflow, "p.a").unwrap();
    assert_eq!(shared.label.as_deref(), Some("A"));
    assert_eq!(
        loaded.get(Workflow, "p.std").unwrap().file,
        "workflows/std.yaml"
    );
    assert_eq!(
        loaded.get(Workflow, "p.graph").unwrap().references[0].key,
        "chain.one.ref"
    );
    assert_issue(
        &loaded.errors,
        "actions/escape.yaml",
        "workflow_file '../../outside.yaml' points outside the pack",
    );
    assert_issue(
        &loaded.errors,
        "actions/abs.yaml",
        "workflow_file '/tmp/x.yaml' must be a relative",
    );
    assert_issue(
        &loaded.errors,
        "actions/gone.yaml",
        "entry_point 'chains/gone.yaml' does not exist (looked for actions/chains/gone.yaml)",
    );
    assert_issue(
        &loaded.errors,
        "actions/noentry.yaml",
        "runner_type 'orquesta' needs entry_point naming the workflow file",
    );
    assert_issue(
        &loaded.errors,
        "workflows/bad.yaml",
        "workflow has no tasks",
    );
    assert_issue(
        &loaded.errors,
        "workflows/nover.yaml",
        "workflow needs a `version`",
    );
    assert_eq!(loaded.errors.len(), 6, "{:#?}", loaded.errors);
    // core.noop: a StackStorm built-in of an absent pack → warning only.
    assert_issue(
        &loaded.warnings,
        "actions/workflows/shared.yaml",
        "uses action core.noop (tasks.t.action) from pack 'core'",
    );
}

// ----- sensors, rules, policies ----------------------------------------------------------------

#[test]
fn sensor_requirements() {
    let dir = write_pack(&[
        (
            "sensors/noentry.yaml",
            "ref: p.noentry\ntrigger_types: [p.t]\n",
        ),
        (
            "sensors/py.yaml",
            "ref: p.py\nclass_name: X\nentry_point: gone.py\n",
        ),
        (
            "sensors/badtypes.yaml",
            "ref: p.badtypes\nentry_point: bin\ntrigger_types:\n  - {description: no name}\n  - 3\n  - {name: ok, pack: other}\n",
        ),
        (
            "sensors/notlist.yaml",
            "ref: p.notlist\nentry_point: bin\ntrigger_types: {a: 1}\n",
        ),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(loaded.count(Sensor), 4);
    assert_issue(
        &loaded.errors,
        "sensors/noentry.yaml",
        "sensor needs an entry_point",
    );
    assert_issue(
        &loaded.errors,
        "sensors/noentry.yaml",
        "trigger_types: trigger 'p.t' is not defined in this pack",
    );
    assert_issue(
        &loaded.errors,
        "sensors/py.yaml",
        "entry_point 'gone.py' does not exist (looked for sensors/gone.py)",
    );
    assert_issue(
        &loaded.errors,
        "sensors/badtypes.yaml",
        "trigger_types[0]: a trigger needs a `name` (or `ref`)",
    );
    assert_issue(
        &loaded.errors,
        "sensors/badtypes.yaml",
        "trigger_types[1]: expected a trigger ref or a trigger type mapping, found a number",
    );
    assert_issue(
        &loaded.errors,
        "sensors/badtypes.yaml",
        "trigger_types[2]: pack: 'other' is not this pack ('p')",
    );
    assert_issue(
        &loaded.errors,
        "sensors/notlist.yaml",
        "trigger_types: expected a list",
    );
    assert_eq!(loaded.errors.len(), 7, "{:#?}", loaded.errors);
}

#[test]
fn rule_references_within_and_across_packs() {
    let dir = write_pack(&[
        ("actions/act.yaml", "ref: p.act\nrunner_type: noop\n"),
        ("rules/empty.yaml", "ref: p.empty\n"),
        (
            "rules/local.yaml",
            "ref: p.local\ntrigger_ref: nope\naction_ref: p.act\n",
        ),
        (
            "rules/cross.yaml",
            "ref: p.cross\ntrigger: {type: lib.event}\naction: {ref: lib.gone}\n",
        ),
        (
            "rules/absent.yaml",
            "ref: p.absent\ntrigger: {type: ghost.event}\naction: {ref: act}\n",
        ),
        (
            "rules/disagree.yaml",
            "ref: p.disagree\ntrigger_ref: lib.event\ntrigger: {type: lib.other}\naction_ref: act\n",
        ),
        (
            "rules/badref.yaml",
            "ref: p.badref\ntrigger_ref: \"a b\"\naction_ref: act\n",
        ),
    ]);
    let loaded = run(dir.path(), "p", &["lib"], &[(Trigger, "lib.event")]);
    assert_issue(&loaded.errors, "rules/empty.yaml", "rule needs a trigger");
    assert_issue(&loaded.errors, "rules/empty.yaml", "rule needs an action");
    assert_issue(
        &loaded.errors,
        "rules/local.yaml",
        "trigger_ref: trigger 'p.nope' is not defined in this pack",
    );
    assert_issue(
        &loaded.errors,
        "rules/cross.yaml",
        "action.ref: pack 'lib' has no action 'lib.gone'",
    );
    assert_issue(
        &loaded.warnings,
        "rules/absent.yaml",
        "rule p.absent uses trigger ghost.event (trigger.type) from pack 'ghost', which is \
         neither in this batch nor installed",
    );
    assert_issue(
        &loaded.errors,
        "rules/disagree.yaml",
        "trigger_ref 'lib.event' and trigger.type 'lib.other' disagree",
    );
    assert_issue(
        &loaded.errors,
        "rules/badref.yaml",
        "trigger_ref: trigger reference 'a b' is not a valid reference",
    );
    // The invalid ref is reported once, not again as a missing trigger.
    assert_eq!(loaded.errors.len(), 6, "{:#?}", loaded.errors);
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);

    // By default the two unresolved references are warnings and their rules are left
    // out; what breaks the format is still an error.
    let loaded = lenient(dir.path(), "p", &["lib"], &[(Trigger, "lib.event")]);
    assert_issue(
        &loaded.warnings,
        "rules/local.yaml",
        "trigger_ref: trigger 'p.nope' is not defined in this pack; rule p.local is not \
         registered",
    );
    assert_issue(
        &loaded.warnings,
        "rules/cross.yaml",
        "action.ref: pack 'lib' has no action 'lib.gone'; rule p.cross is not registered",
    );
    assert_eq!(loaded.errors.len(), 4, "{:#?}", loaded.errors);
    assert_eq!(loaded.warnings.len(), 3, "{:#?}", loaded.warnings);
    assert_eq!(
        refs(&loaded, Rule),
        ["p.absent", "p.badref", "p.disagree", "p.empty"]
    );
}

#[test]
fn policy_requirements() {
    let dir = write_pack(&[
        ("actions/act.yaml", "ref: p.act\nrunner_type: noop\n"),
        (
            "policies/global.yaml",
            "ref: p.global\nconcurrency: {limit: 1, method: cancel}\n",
        ),
        (
            "policies/packlevel.yaml",
            "ref: p.packlevel\npack_ref: p\nrate_limit: {max_executions: 5, window_seconds: 60}\n",
        ),
        (
            "policies/nofeature.yaml",
            "ref: p.nofeature\naction_ref: act\n",
        ),
        (
            "policies/st2.yaml",
            "name: st2\npolicy_type: action.retry\nparameters: {max_retry_count: 2}\n",
        ),
        (
            "policies/otherpack.yaml",
            "ref: p.otherpack\npack_ref: q\nquotas: [{quota_type: executions, limit: 5}]\n",
        ),
        (
            "policies/badvalues.yaml",
            "ref: p.badvalues\naction_ref: act\nconcurrency: {limit: 0, method: drop}\nrate_limit: {max_executions: 5}\n",
        ),
        (
            "policies/missing.yaml",
            "ref: p.missing\naction_ref: gone\nquotas: [{quota_type: x, limit: 1}]\n",
        ),
        (
            "policies/foreign.yaml",
            "ref: p.foreign\nresource_ref: lib.act\npolicy_type: action.concurrency\n",
        ),
    ]);
    let loaded = run(dir.path(), "p", &["lib"], &[(Action, "lib.act")]);
    assert_eq!(loaded.count(Policy), 8);
    assert_issue(
        &loaded.errors,
        "policies/global.yaml",
        "policy has neither action_ref nor pack_ref, so it would be a global policy",
    );
    assert_issue(
        &loaded.errors,
        "policies/nofeature.yaml",
        "policy needs at least one of concurrency, rate_limit or quotas",
    );
    assert_issue(
        &loaded.errors,
        "policies/st2.yaml",
        "StackStorm policy needs resource_ref",
    );
    assert_issue(
        &loaded.errors,
        "policies/otherpack.yaml",
        "pack_ref: 'q' is not this pack ('p')",
    );
    assert_issue(
        &loaded.errors,
        "policies/badvalues.yaml",
        "concurrency.limit: expected a positive whole number, found 0",
    );
    assert_issue(
        &loaded.errors,
        "policies/badvalues.yaml",
        "concurrency.method: 'drop' is not allowed (allowed: cancel, enqueue)",
    );
    assert_issue(
        &loaded.errors,
        "policies/badvalues.yaml",
        "rate_limit.window_seconds is required",
    );
    assert_issue(
        &loaded.errors,
        "policies/missing.yaml",
        "action_ref: action 'p.gone' is not defined in this pack",
    );
    // StackStorm's policy types require these parameters (policy_types.rs).
    assert_issue(
        &loaded.errors,
        "policies/st2.yaml",
        "parameters.retry_on is required by policy type action.retry",
    );
    assert_issue(
        &loaded.errors,
        "policies/foreign.yaml",
        "parameters.threshold is required by policy type action.concurrency",
    );
    assert_eq!(loaded.errors.len(), 10, "{:#?}", loaded.errors);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
}

#[test]
fn other_kinds_and_display() {
    let dir = write_pack(&[
        (
            "permission_sets/bad.yaml",
            "ref: p.bad\ngrants: {resource: x}\n",
        ),
        ("runtimes/named.yaml", "name: Python\n"),
        ("runtimes/foreign.yaml", "ref: core.python\n"),
        (
            "queues/q.yaml",
            "ref: p.q\ndispatch_action: lib.work\npermission_set_ref: bad\n",
        ),
        (
            "triggers/t.yml",
            "name: t\nparameters_schema: {type: object}\n",
        ),
    ]);
    let loaded = check(dir.path(), "p");
    assert_eq!(refs(&loaded, Runtime), ["p.named"]);
    assert_eq!(refs(&loaded, Trigger), ["p.t"]);
    assert_eq!(
        loaded.get(Trigger, "p.t").unwrap().definition["parameters"]["type"],
        "object"
    );
    assert_issue(
        &loaded.errors,
        "permission_sets/bad.yaml",
        "grants: expected a list of grants",
    );
    assert_issue(
        &loaded.errors,
        "runtimes/foreign.yaml",
        "ref 'core.python' belongs to pack 'core'",
    );
    assert_issue(
        &loaded.warnings,
        "runtimes/named.yaml",
        "using the file name: runtime p.named",
    );
    assert_issue(
        &loaded.warnings,
        "queues/q.yaml",
        "queue p.q uses action lib.work (dispatch_action) from pack 'lib'",
    );
    assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
    let e = &loaded.errors[0];
    assert_eq!(e.to_string(), format!("{}: {}", e.file, e.message));
    assert_eq!(ComponentKind::parse("permission_set"), Some(PermissionSet));
    assert_eq!(PermissionSet.as_str(), "permission_set");
    assert_eq!(PermissionSet.dir(), "permission_sets");
}

#[test]
fn missing_pack_dir_and_empty_pack() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = check(dir.path(), "p");
    assert!(loaded.components.is_empty());
    assert!(loaded.errors.is_empty() && loaded.warnings.is_empty());
    // A missing pack directory cannot be opened, so there is nothing to load from.
    let err = PackDir::open(&dir.path().join("nope")).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let dir = write_pack(&[("actions", "not a dir")]);
    let loaded = check(dir.path(), "p");
    assert_issue(&loaded.errors, "actions", "is not a directory");
}

// ----- pack errors and component problems ----------------------------------------------

/// A StackStorm pack with stale references at several depths.
const STALE_PACK: &[(&str, &str)] = &[
    (
        "actions/hello.yaml",
        "name: hello\nrunner_type: local-shell-cmd\n",
    ),
    (
        "actions/greet.yaml",
        "name: greet\nrunner_type: orquesta\nentry_point: workflows/greet.yaml\n",
    ),
    (
        "actions/workflows/greet.yaml",
        "version: 1.0\ntasks:\n  one:\n    action: p.hello\n",
    ),
    (
        "actions/deploy.yaml",
        "name: deploy\nrunner_type: orquesta\nentry_point: workflows/deploy.yaml\n",
    ),
    (
        "actions/workflows/deploy.yaml",
        "version: 1.0\ntasks:\n  one:\n    action: p.hello\n    next: [{do: two}]\n  two:\n    action: p.missing\n",
    ),
    // Runs the action whose workflow is broken: stranded.
    (
        "rules/deploy_on_tick.yaml",
        "name: deploy_on_tick\ntrigger: {type: p.tick}\naction: {ref: p.deploy}\n",
    ),
    (
        "policies/deploy_once.yaml",
        "name: deploy_once\nresource_ref: p.deploy\npolicy_type: action.concurrency\nparameters: {threshold: 1}\n",
    ),
    (
        "aliases/deploy.yaml",
        "name: deploy\naction_ref: p.deploy\nformats: [\"deploy {{ what }}\"]\n",
    ),
    // A sensor that emits a trigger type nobody declares: dropped, and with it the
    // trigger type it declares and the rule on that.
    (
        "sensors/watch.yaml",
        "class_name: Watch\nentry_point: watch.py\ntrigger_types:\n  - p.undeclared\n  - name: changed\n",
    ),
    ("sensors/watch.py", "pass\n"),
    (
        "rules/on_change.yaml",
        "name: on_change\ntrigger: {type: p.changed}\naction: {ref: p.hello}\n",
    ),
    // Fine: a trigger file and a rule on it.
    ("triggers/tick.yaml", "name: tick\n"),
    (
        "rules/greet_on_tick.yaml",
        "name: greet_on_tick\ntrigger: {type: p.tick}\naction: {ref: p.greet}\n",
    ),
    // A reference into a pack that is not there: kept, with a warning.
    (
        "rules/elsewhere.yaml",
        "name: elsewhere\ntrigger: {type: p.tick}\naction: {ref: ghost.run}\n",
    ),
];

#[test]
fn component_problems_drop_their_component_and_everything_that_needs_it() {
    let dir = write_pack(STALE_PACK);
    let loaded = lenient(dir.path(), "p", &[], &[]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert_eq!(refs(&loaded, Action), ["p.greet", "p.hello"]);
    assert_eq!(refs(&loaded, Workflow), ["p.greet"]);
    assert_eq!(refs(&loaded, Trigger), ["p.tick"]);
    assert_eq!(refs(&loaded, Rule), ["p.elsewhere", "p.greet_on_tick"]);
    assert!(refs(&loaded, Sensor).is_empty());
    assert!(refs(&loaded, Policy).is_empty());
    assert!(refs(&loaded, Alias).is_empty());
    // The direct problems...
    assert_issue(
        &loaded.warnings,
        "actions/workflows/deploy.yaml",
        "tasks.two.action: action 'p.missing' is not defined in this pack; workflow p.deploy \
         is not registered",
    );
    assert_issue(
        &loaded.warnings,
        "sensors/watch.yaml",
        "trigger_types: trigger 'p.undeclared' is not defined in this pack; sensor p.Watch is \
         not registered",
    );
    // ... and what they strand, each naming what it needed.
    assert_issue(
        &loaded.warnings,
        "actions/deploy.yaml",
        "entry_point: workflow 'p.deploy' is not registered (see actions/workflows/deploy.yaml); \
         action p.deploy is not registered",
    );
    for (file, what) in [
        ("rules/deploy_on_tick.yaml", "rule p.deploy_on_tick"),
        ("policies/deploy_once.yaml", "policy p.deploy_once"),
        ("aliases/deploy.yaml", "action alias p.deploy"),
    ] {
        assert_issue(
            &loaded.warnings,
            file,
            &format!(
                "action 'p.deploy' is not registered (see actions/deploy.yaml); {what} is not \
                 registered"
            ),
        );
    }
    assert_issue(
        &loaded.warnings,
        "sensors/watch.yaml",
        "declared by sensor p.Watch, which is not registered; trigger p.changed is not registered",
    );
    assert_issue(
        &loaded.warnings,
        "rules/on_change.yaml",
        "trigger.type: trigger 'p.changed' is not registered (see sensors/watch.yaml); rule \
         p.on_change is not registered",
    );
    assert_issue(
        &loaded.warnings,
        "rules/elsewhere.yaml",
        "from pack 'ghost', which is neither in this batch nor installed",
    );
    assert_eq!(loaded.problems.len(), 8, "{:#?}", loaded.problems);
    // Nothing left refers to a dropped component of this pack.
    for c in &loaded.components {
        for r in c.references.iter().filter(|r| r.pack() == "p") {
            assert!(
                loaded.get(r.kind, &r.r#ref).is_some(),
                "{} refers to dropped {}",
                c.r#ref,
                r.r#ref
            );
        }
    }
}

#[test]
fn strict_makes_component_problems_pack_errors() {
    let dir = write_pack(STALE_PACK);
    let loaded = run(dir.path(), "p", &[], &[]);
    // Only the direct problems: the pack fails anyway, nothing is dropped.
    assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
    assert_issue(
        &loaded.errors,
        "actions/workflows/deploy.yaml",
        "tasks.two.action: action 'p.missing' is not defined in this pack",
    );
    assert_issue(
        &loaded.errors,
        "sensors/watch.yaml",
        "trigger_types: trigger 'p.undeclared' is not defined in this pack",
    );
    assert!(
        loaded
            .errors
            .iter()
            .all(|e| !e.message.contains("not registered"))
    );
    assert_eq!(loaded.count(Action), 3);
    assert_eq!(loaded.count(Rule), 4);
    assert_eq!(loaded.count(Alias), 1);
    assert_eq!(loaded.problems.len(), 2);
    // The reference into an absent pack is still only a warning.
    assert_issue(
        &loaded.warnings,
        "rules/elsewhere.yaml",
        "from pack 'ghost', which is neither in this batch nor installed",
    );
}

#[test]
fn pack_errors_stay_errors_by_default() {
    let dir = write_pack(&[
        ("actions/a.yaml", "name: a\nrunner_type: local-shell-cmd\n"),
        (
            "actions/bad.yaml",
            "name: bad\nrunner_type: local-shell-cmd\nparameter_delivery: env\n",
        ),
        ("rules/norule.yaml", "name: norule\naction: {ref: p.a}\n"),
        ("rules/broken.yaml", "name: broken\ntrigger: [\n"),
        (
            "rules/theirs.yaml",
            "ref: q.theirs\ntrigger: {type: p.t}\naction: {ref: p.a}\n",
        ),
        (
            "rules/stale.yaml",
            "name: stale\ntrigger: {type: p.t}\naction: {ref: p.a}\n",
        ),
    ]);
    let loaded = lenient(dir.path(), "p", &[], &[]);
    assert_issue(&loaded.errors, "actions/bad.yaml", "parameter_delivery");
    assert_issue(&loaded.errors, "rules/norule.yaml", "rule needs a trigger");
    assert_issue(&loaded.errors, "rules/broken.yaml", "line");
    assert_issue(&loaded.errors, "rules/theirs.yaml", "belongs to pack 'q'");
    assert_eq!(loaded.errors.len(), 4, "{:#?}", loaded.errors);
    assert_issue(
        &loaded.warnings,
        "rules/stale.yaml",
        "trigger.type: trigger 'p.t' is not defined in this pack; rule p.stale is not registered",
    );
}

#[test]
fn unknown_runners_are_component_problems() {
    let dir = write_pack(&[
        ("runtimes/ruby.yaml", "ref: p.ruby\nname: Ruby\n"),
        ("actions/own.yaml", "name: own\nrunner_type: p.ruby\n"),
        ("actions/bare.yaml", "name: bare\nrunner_type: ruby\n"),
        ("actions/lib.yaml", "name: lib\nrunner_type: lib.perl\n"),
        (
            "actions/libnope.yaml",
            "name: libnope\nrunner_type: lib.cobol\n",
        ),
        (
            "actions/ghost.yaml",
            "name: ghost\nrunner_type: ghost.perl\n",
        ),
        (
            "actions/nosuch.yaml",
            "name: nosuch\nrunner_type: no-such-runner\n",
        ),
        (
            "actions/upper.yaml",
            "name: upper\nrunner_type: Local-Shell-Cmd\n",
        ),
    ]);
    let loaded = lenient(dir.path(), "p", &["lib"], &[(Runtime, "lib.perl")]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert_eq!(
        refs(&loaded, Action),
        ["p.bare", "p.ghost", "p.lib", "p.own", "p.upper"]
    );
    assert_issue(
        &loaded.warnings,
        "actions/nosuch.yaml",
        "runner_type: unknown runner 'no-such-runner': neither a runner of Attune or \
         StackStorm nor a runtime of this pack; action p.nosuch is not registered",
    );
    assert_issue(
        &loaded.warnings,
        "actions/libnope.yaml",
        "runner_type: unknown runner 'lib.cobol': neither a runner of Attune or StackStorm nor \
         a runtime of pack 'lib'",
    );
    assert_issue(
        &loaded.warnings,
        "actions/ghost.yaml",
        "from pack 'ghost', which is neither in this batch nor installed",
    );
    for runner in [
        "local-shell-cmd",
        "local-shell-script",
        "remote-shell-cmd",
        "remote-shell-script",
        "python-script",
        "orquesta",
        "action-chain",
        "http-request",
        "noop",
        "announcement",
        "inquirer",
        "winrm-cmd",
        "winrm-ps-cmd",
        "winrm-ps-script",
        "mistral-v2",
        "shell",
        "python",
        "native",
    ] {
        assert!(is_builtin_runner(runner), "{runner}");
    }
    assert!(!is_builtin_runner("no-such-runner"));
}

#[test]
fn aliases_are_loaded_and_checked() {
    let dir = write_pack(&[
        (
            "actions/greet.yaml",
            "name: greet\nrunner_type: local-shell-cmd\n",
        ),
        (
            "aliases/greet.yaml",
            "name: greet\npack: p\naction_ref: p.greet\ndescription: Greet\nformats:\n  - \"greet {{ name }}\"\n  - display: \"hi <name>\"\n    representation: [\"hi {{ name }}\", \"hello {{ name }}\"]\nack: {enabled: false}\nresult: {format: \"{{ execution.result }}\"}\n",
        ),
        (
            "aliases/bare.yaml",
            "name: bare\naction_ref: greet\nenabled: false\nformats: [{display: \"bare\"}]\n",
        ),
        (
            "aliases/stale.yaml",
            "name: stale\naction_ref: p.gone\nformats: [\"stale\"]\n",
        ),
        (
            "aliases/noformats.yaml",
            "name: noformats\naction_ref: p.greet\n",
        ),
        (
            "aliases/emptyformats.yaml",
            "name: emptyformats\naction_ref: p.greet\nformats: []\n",
        ),
        (
            "aliases/badformats.yaml",
            "name: badformats\naction_ref: p.greet\nformats:\n  - 3\n  - \"\"\n  - {representation: []}\n  - {representation: [\"x\", 2], colour: red}\n  - {}\n",
        ),
        (
            "aliases/notalist.yaml",
            "name: notalist\naction_ref: p.greet\nformats: greet\n",
        ),
        (
            "aliases/noaction.yaml",
            "name: noaction\nformats: [\"x\"]\nack: yes please\n",
        ),
    ]);
    let loaded = lenient(dir.path(), "p", &[], &[]);
    let greet = loaded.get(Alias, "p.greet").unwrap();
    assert_eq!(greet.file, "aliases/greet.yaml");
    assert_eq!(greet.description.as_deref(), Some("Greet"));
    assert_eq!(greet.definition["action_ref"], "p.greet");
    assert_eq!(greet.definition["enabled"], true);
    assert_eq!(greet.references[0].r#ref, "p.greet");
    let bare = loaded.get(Alias, "p.bare").unwrap();
    assert_eq!(bare.definition["action_ref"], "p.greet");
    assert_eq!(bare.definition["enabled"], false);
    assert!(loaded.get(Alias, "p.stale").is_none());
    assert_issue(
        &loaded.warnings,
        "aliases/stale.yaml",
        "action_ref: action 'p.gone' is not defined in this pack; action alias p.stale is not \
         registered",
    );
    assert_issue(
        &loaded.errors,
        "aliases/noformats.yaml",
        "action alias needs `formats`",
    );
    assert_issue(
        &loaded.errors,
        "aliases/emptyformats.yaml",
        "action alias needs `formats`",
    );
    for needle in [
        "formats[0]: expected a non-empty string or a {display, representation} mapping, found 3",
        "formats[1]: expected a non-empty string",
        "formats[2].representation: expected a non-empty list of strings, found a list",
        "formats[3]: unknown key 'colour'",
        "formats[3].representation[1]: expected a non-empty string, found 2",
        "formats[4]: needs `representation` (a list of phrases) or `display`",
    ] {
        assert_issue(&loaded.errors, "aliases/badformats.yaml", needle);
    }
    assert_issue(
        &loaded.errors,
        "aliases/notalist.yaml",
        "formats: expected a list",
    );
    assert_issue(
        &loaded.errors,
        "aliases/noaction.yaml",
        "action alias needs `action_ref`",
    );
    assert_issue(
        &loaded.errors,
        "aliases/noaction.yaml",
        "ack: expected a mapping",
    );
    assert_eq!(loaded.errors.len(), 11, "{:#?}", loaded.errors);
    assert_eq!(Alias.as_str(), "alias");
    assert_eq!(Alias.dir(), "aliases");
    assert_eq!(ComponentKind::parse("alias"), Some(Alias));
}
