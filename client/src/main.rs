//! `attune-packs`: the command-line client of the attune-packs service.

mod history;
mod inventory;
mod output;
mod tools;

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context;
use attune_packs_client::{Client, EventStream, finish, pb};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attune-packs",
    version,
    about = "Install Attune packs through an attune-packs server"
)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "ATTUNE_PACKS_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token (see `attune-packs-server token issue`).
    #[arg(
        long,
        global = true,
        env = "ATTUNE_PACKS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the result as JSON (field names as in the API).
    #[arg(long, global = true, conflicts_with = "yaml")]
    json: bool,
    /// Print the result as YAML.
    #[arg(long, global = true)]
    yaml: bool,
    /// No progress output.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install packs with their dependencies: download, resolve, build environments and
    /// register, all or nothing.
    Install {
        /// Pack sources, as for `download`; omit with `--lock`.
        #[arg(required_unless_present = "lock")]
        packs: Vec<String>,
        /// Reproduce the set in this lock file (JSON: a lock, or a whole install result).
        #[arg(long, conflicts_with = "packs")]
        lock: Option<std::path::PathBuf>,
        /// After a successful install, write its lock to this file.
        #[arg(long)]
        write_lock: Option<std::path::PathBuf>,
        /// Index searched before the configured ones.
        #[arg(long)]
        registry_url: Option<String>,
        /// Git ref for git sources without `@ref`.
        #[arg(long = "ref")]
        ref_spec: Option<String>,
        /// Where packs are stored (server default when omitted).
        #[arg(long)]
        packs_base_dir: Option<String>,
        /// Python version for the packs' virtualenvs, e.g. 3.11 (default: the highest
        /// interpreter on the server that fits each pack).
        #[arg(long)]
        python_version: Option<String>,
        /// Node.js major version the packs' node modules need, e.g. 20 (default: the
        /// server's `node`).
        #[arg(long)]
        nodejs_version: Option<String>,
        /// Seconds per download and per environment build (server default 300).
        #[arg(long)]
        timeout: Option<u32>,
        /// Skip TLS certificate verification (if the server allows it).
        #[arg(long)]
        insecure: bool,
        /// Do not resolve dependencies.
        #[arg(long)]
        skip_deps: bool,
        /// Do not run the packs' tests.
        #[arg(long)]
        skip_tests: bool,
        /// Replace installed packs the plan changes, and register despite failing tests.
        #[arg(long)]
        force: bool,
        /// Show the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fail a pack on a component problem (an unresolved reference, an unknown runner)
        /// instead of leaving that component out with a warning.
        #[arg(long)]
        strict: bool,
    },
    /// Download packs (registry refs, git URLs, archives, local paths) into a directory on the server.
    ///
    /// Paths are read by the server; a relative path that exists in the current
    /// directory is sent as an absolute path, and a relative destination is taken from
    /// the current directory too.
    Download {
        /// Pack sources: `core`, `core@^1.2`, `github:org/repo@v1`, `https://…/p.tar.gz`, `/srv/p`.
        #[arg(required = true)]
        packs: Vec<String>,
        /// Directory on the server; each pack lands in `<dir>/<ref>`.
        #[arg(long, short = 'd')]
        destination_dir: String,
        /// Index searched before the configured ones.
        #[arg(long)]
        registry_url: Option<String>,
        /// Git ref for git sources without `@ref`.
        #[arg(long = "ref")]
        ref_spec: Option<String>,
        /// Seconds per pack (server default 300).
        #[arg(long)]
        timeout: Option<u32>,
        /// Skip TLS certificate verification (if the server allows it).
        #[arg(long)]
        insecure: bool,
        /// Replace an existing, different pack directory.
        #[arg(long)]
        force: bool,
    },
    /// Build Python virtualenvs and Node modules for packs (server paths; a relative path
    /// that exists in the current directory is sent as an absolute path).
    BuildEnvs {
        /// Pack directories, as paths on the server.
        #[arg(required = true)]
        pack_paths: Vec<String>,
        /// Base directory whose `.envs/` holds the environments (server default when omitted).
        #[arg(long)]
        packs_base_dir: Option<String>,
        /// Interpreter version to use, e.g. 3.11 (default: the highest that fits the pack).
        #[arg(long)]
        python_version: Option<String>,
        /// Node.js major version to require, e.g. 20.
        #[arg(long)]
        nodejs_version: Option<String>,
        /// Build no Python virtualenvs.
        #[arg(long)]
        skip_python: bool,
        /// Install no node modules.
        #[arg(long)]
        skip_nodejs: bool,
        /// Rebuild even when nothing changed.
        #[arg(long)]
        force_rebuild: bool,
        /// Seconds per pack (server default 600).
        #[arg(long)]
        timeout: Option<u32>,
        /// Only report runtimes and existing environments; build nothing.
        #[arg(long)]
        detect_only: bool,
    },
    /// Register packs: store them under the packs base directory and record their components
    /// (server paths; a relative path that exists in the current directory is sent as an
    /// absolute path).
    Register {
        /// Pack directories, as paths on the server.
        #[arg(required = true)]
        pack_paths: Vec<String>,
        /// Where packs are stored (server default when omitted).
        #[arg(long)]
        packs_base_dir: Option<String>,
        /// Skip component validation.
        #[arg(long)]
        skip_validation: bool,
        /// Do not run the packs' tests.
        #[arg(long)]
        skip_tests: bool,
        /// Replace registered packs, and register despite failing tests.
        #[arg(long)]
        force: bool,
        /// Fail a pack on a component problem (an unresolved reference, an unknown runner)
        /// instead of leaving that component out with a warning (StackStorm's
        /// --register-fail-on-failure).
        #[arg(long)]
        strict: bool,
    },
    /// Search the server's registry indices (ref, label, description, keywords).
    Search {
        /// Substring to look for; empty lists every pack.
        #[arg(default_value = "")]
        keyword: String,
    },
    /// The registry indices the server searches, in order.
    Registries,
    /// Checksum of a pack directory (attune-pack-file-v1) or archive (its bytes, and the
    /// pack inside). Local: needs no server.
    #[command(args(local_only()))]
    Checksum {
        /// A pack directory or archive on this machine.
        path: std::path::PathBuf,
    },
    /// Registry index files. Local: needs no server.
    #[command(args(local_only()))]
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Remove installed packs: files, rows, environments and kept versions, all or
    /// nothing. Refused while other installed packs depend on them.
    Remove {
        /// Refs of installed packs.
        #[arg(required = true)]
        refs: Vec<String>,
        /// Also remove the installed packs that depend on these, dependents first.
        #[arg(long)]
        cascade: bool,
        /// Remove even though installed packs depend on these (they stay, broken).
        #[arg(long)]
        force: bool,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pack events (pack.registered, pack.deleted, pack.rolled_back) from a cursor; with
    /// --follow, then live until interrupted. --json prints one event per line.
    Events {
        /// Events after this cursor; 0: from the oldest kept.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Skip the stored events; with --follow, only new ones.
        #[arg(long)]
        only_new: bool,
        /// Keep following new events after the stored ones.
        #[arg(long, short)]
        follow: bool,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// What happened to an installed pack (install, upgrade, rollback, …), newest first,
    /// and the previous versions kept for rollback.
    History {
        /// Ref of an installed (or once installed) pack.
        #[arg(value_name = "REF")]
        pack_ref: String,
        /// Entries to show (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put a kept previous version of a pack back: files, rows and environments, without
    /// the network.
    Rollback {
        /// Ref of an installed pack that has a kept previous version.
        #[arg(value_name = "REF")]
        pack_ref: String,
        /// The kept version (default: the most recently kept one).
        #[arg(long = "to", value_name = "VERSION")]
        to_version: Option<String>,
        /// Roll back even though installed packs require the current version.
        #[arg(long)]
        force: bool,
    },
    /// Installed packs, in ref order, a page at a time.
    List {
        /// Only packs whose ref starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only packs whose ref, label, description or tags contain this (any case).
        #[arg(long)]
        keyword: Option<String>,
        /// Packs per page (server default 50, at most 100).
        #[arg(long)]
        page_size: Option<u32>,
        /// Continue after a previous page (its `next_page_token`).
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// One installed pack in full: provenance, components, environments, last test,
    /// dependencies both ways.
    Show {
        /// Ref of an installed pack.
        #[arg(value_name = "REF")]
        pack_ref: String,
    },
    /// Check installed packs' files against what was registered (like `rpm -V`); exit 1
    /// when a pack was modified or is missing.
    Verify {
        /// Packs to verify; none: every installed pack.
        #[arg(value_name = "REF")]
        refs: Vec<String>,
    },
    /// Analyse pack and runtime dependencies of pack directories (server paths; a relative
    /// path that exists in the current directory is sent as an absolute path).
    Deps {
        /// Pack directories, as paths on the server.
        #[arg(required = true)]
        pack_paths: Vec<String>,
        /// Do not report unmet runtime requirements as errors.
        #[arg(long)]
        skip_validation: bool,
    },
}

/// `--server` and `--token` for the local tools: still accepted (a script may pass them
/// to every command, and `ATTUNE_PACKS_*` stay harmless), but hidden from their help,
/// since these commands never talk to a server. A subcommand that defines an argument
/// of the same name does not receive the global one.
fn local_only() -> [clap::Arg; 2] {
    [
        clap::Arg::new("server")
            .long("server")
            .global(true)
            .hide(true),
        clap::Arg::new("token")
            .long("token")
            .global(true)
            .hide(true),
    ]
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Print the index entry for a pack directory or archive.
    Entry {
        /// A pack directory or archive on this machine.
        path: std::path::PathBuf,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Add (or with --update replace) a pack's entry in an index file.
    Update {
        /// The index file to change.
        #[arg(long)]
        index: std::path::PathBuf,
        /// A pack directory or archive on this machine.
        path: std::path::PathBuf,
        #[command(flatten)]
        sources: SourceArgs,
        /// Replace an existing entry for the same ref.
        #[arg(long)]
        update: bool,
    },
    /// Merge index files, keeping the highest version of each ref.
    Merge {
        /// The merged index file to write.
        #[arg(long)]
        output: std::path::PathBuf,
        /// Index files to merge.
        #[arg(required = true)]
        inputs: Vec<std::path::PathBuf>,
        /// Overwrite the output file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct SourceArgs {
    /// Git repository URL of the pack.
    #[arg(long)]
    git_url: Option<String>,
    /// Commit or tag of that repository the entry describes.
    #[arg(long)]
    git_ref: Option<String>,
    /// Where the archive (given as PATH) will be published.
    #[arg(long)]
    archive_url: Option<String>,
}

impl SourceArgs {
    fn sources(&self) -> tools::Sources {
        tools::Sources {
            git_url: self.git_url.clone(),
            git_ref: self.git_ref.clone(),
            archive_url: self.archive_url.clone(),
        }
    }
}

/// Commands that work on local files only.
fn run_local(command: &Command, format: Format) -> Option<anyhow::Result<ExitCode>> {
    let outcome = match command {
        Command::Checksum { path } => tools::checksum(path).and_then(|c| {
            let value = serde_json::json!({
                "path": path.display().to_string(),
                "kind": c.kind,
                "checksum": c.checksum,
                "pack_checksum": c.pack_checksum,
            });
            match format {
                Format::Table => {
                    println!("{}", c.checksum);
                    if let Some(p) = &c.pack_checksum {
                        println!("{p} (pack inside the archive)");
                    }
                    Ok(())
                }
                Format::Json => output::print_json(&value),
                Format::Yaml => output::print_yaml(&value),
            }
        }),
        Command::Index { command } => match command {
            IndexCommand::Entry { path, sources } => tools::index_entry(path, &sources.sources())
                .and_then(|entry| match format {
                    Format::Yaml => output::print_yaml(&entry),
                    _ => output::print_json(&entry),
                }),
            IndexCommand::Update {
                index,
                path,
                sources,
                update,
            } => tools::index_update(index, path, &sources.sources(), *update).map(|done| {
                let verb = match done {
                    tools::IndexUpdate::Created => "added to a new index",
                    tools::IndexUpdate::Added => "added to",
                    tools::IndexUpdate::Replaced => "replaced in",
                };
                println!("✓ entry {verb} {}", index.display());
            }),
            IndexCommand::Merge {
                output,
                inputs,
                force,
            } => tools::index_merge(output, inputs, *force).map(|s| {
                println!(
                    "✓ merged {} into {}",
                    attune_packs_core::progress::count(s.inputs, "index file", "index files"),
                    output.display()
                );
                println!("  packs loaded: {}", s.loaded);
                println!("  unique packs: {}", s.unique);
                println!("  duplicates resolved: {}", s.duplicates);
            }),
        },
        _ => return None,
    };
    Some(outcome.map(|()| ExitCode::SUCCESS))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = if cli.json {
        Format::Json
    } else if cli.yaml {
        Format::Yaml
    } else {
        Format::Table
    };
    if let Some(outcome) = run_local(&cli.command, format) {
        return outcome;
    }
    let mut cli = cli;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    absolutise(&mut cli.command, &cwd);
    let token = cli
        .token
        .clone()
        .context("no token: pass --token or set ATTUNE_PACKS_TOKEN")?;
    let mut client = Client::connect(&cli.server, &token).await?;
    let progress = Progress::new(cli.quiet);
    match cli.command {
        Command::Download {
            packs,
            destination_dir,
            registry_url,
            ref_spec,
            timeout,
            insecure,
            force,
        } => {
            let stream = client
                .download_stream(pb::DownloadRequest {
                    packs,
                    destination_dir,
                    registry_url,
                    ref_spec,
                    timeout,
                    verify_ssl: Some(!insecure),
                    force: Some(force),
                })
                .await?;
            let view = View::new(format, output::print_download);
            progress.show(stream, view, |r| r.failure_count == 0).await
        }
        Command::Install {
            packs,
            lock,
            write_lock,
            registry_url,
            ref_spec,
            packs_base_dir,
            python_version,
            nodejs_version,
            timeout,
            insecure,
            skip_deps,
            skip_tests,
            force,
            dry_run,
            strict,
        } => {
            let lock = lock.as_deref().map(read_lock).transpose()?;
            let stream = client
                .install_stream(pb::InstallRequest {
                    packs,
                    registry_url,
                    ref_spec,
                    packs_base_dir,
                    verify_ssl: Some(!insecure),
                    timeout,
                    python_version,
                    nodejs_version,
                    skip_deps: Some(skip_deps),
                    skip_tests: Some(skip_tests),
                    force: Some(force),
                    dry_run: Some(dry_run),
                    lock,
                    strict: Some(strict),
                })
                .await?;
            let view = View::new(format, output::print_install);
            let result = progress.drive(stream).await?;
            view.print(&result)?;
            if let (Some(path), Some(lock)) = (write_lock, &result.lock) {
                std::fs::write(&path, serde_json::to_string_pretty(lock)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(exit_code(result.success))
        }
        Command::BuildEnvs {
            pack_paths,
            packs_base_dir,
            python_version,
            nodejs_version,
            skip_python,
            skip_nodejs,
            force_rebuild,
            timeout,
            detect_only,
        } => {
            let stream = client
                .build_envs_stream(pb::BuildEnvsRequest {
                    pack_paths,
                    packs_base_dir,
                    python_version,
                    nodejs_version,
                    skip_python: Some(skip_python),
                    skip_nodejs: Some(skip_nodejs),
                    force_rebuild: Some(force_rebuild),
                    timeout,
                    detect_only: Some(detect_only),
                })
                .await?;
            let view = View::new(format, output::print_build_envs);
            progress
                .show(stream, view, |r| r.failed_environments.is_empty())
                .await
        }
        Command::Register {
            pack_paths,
            packs_base_dir,
            skip_validation,
            skip_tests,
            force,
            strict,
        } => {
            let stream = client
                .register_batch_stream(pb::RegisterBatchRequest {
                    pack_paths,
                    packs_base_dir,
                    skip_validation: Some(skip_validation),
                    skip_tests: Some(skip_tests),
                    force: Some(force),
                    strict: Some(strict),
                })
                .await?;
            let view = View::new(format, output::print_register);
            progress
                .show(stream, view, |r| r.failed_packs.is_empty())
                .await
        }
        Command::Search { keyword } => {
            let result = client.search_packs(&keyword).await?;
            View::new(format, output::print_search).print(&result)?;
            Ok(exit_code(true))
        }
        Command::Registries => {
            let result = client.list_registries().await?;
            View::new(format, output::print_registries).print(&result)?;
            Ok(exit_code(true))
        }
        Command::Remove {
            refs,
            cascade,
            force,
            dry_run,
        } => {
            let stream = client
                .remove_packs_stream(pb::RemovePacksRequest {
                    refs,
                    cascade,
                    force,
                    dry_run,
                })
                .await?;
            let view = View::new(format, output::print_remove);
            progress.show(stream, view, |r| r.success).await
        }
        Command::Events {
            after,
            only_new,
            follow,
            limit,
        } => {
            let mut stream = client
                .watch_events(pb::WatchEventsRequest {
                    after,
                    only_new,
                    stored_only: !follow,
                    limit: limit.unwrap_or(0),
                })
                .await?;
            use futures::StreamExt;
            while let Some(event) = stream.next().await {
                output::print_pack_event(&event?, format)?;
            }
            Ok(exit_code(true))
        }
        Command::History { pack_ref, limit } => {
            let result = client
                .pack_history(pb::PackHistoryRequest {
                    r#ref: pack_ref,
                    limit: Some(limit),
                })
                .await?;
            View::new(format, history::print_history).print(&result)?;
            Ok(exit_code(true))
        }
        Command::Rollback {
            pack_ref,
            to_version,
            force,
        } => {
            let stream = client
                .rollback_pack_stream(pb::RollbackPackRequest {
                    r#ref: pack_ref,
                    to_version: to_version.unwrap_or_default(),
                    force,
                })
                .await?;
            let view = View::new(format, history::print_rollback);
            progress.show(stream, view, |r| r.success).await
        }
        Command::List {
            prefix,
            keyword,
            page_size,
            page_token,
            all,
        } => {
            let mut request = pb::ListPacksRequest {
                ref_prefix: prefix.unwrap_or_default(),
                keyword: keyword.unwrap_or_default(),
                page_size,
                page_token: page_token.unwrap_or_default(),
                page: None,
            };
            let mut page = client.list_packs(request.clone()).await?;
            if all {
                let mut packs = std::mem::take(&mut page.packs);
                while !page.next_page_token.is_empty() {
                    request.page_token = std::mem::take(&mut page.next_page_token);
                    page = client.list_packs(request.clone()).await?;
                    packs.append(&mut page.packs);
                }
                page.packs = packs;
                page.page = 1;
            }
            let view = View::new(format, |r: &pb::ListPacksResponse| {
                inventory::print_list(&r.packs, r.total_items, &r.next_page_token)
            });
            view.print(&page)?;
            Ok(exit_code(true))
        }
        Command::Show { pack_ref } => {
            let detail = client.get_pack(&pack_ref).await?;
            View::new(format, inventory::print_show).print(&detail)?;
            Ok(exit_code(true))
        }
        Command::Verify { refs } => {
            let stream = client
                .verify_packs_stream(pb::VerifyPacksRequest { refs })
                .await?;
            let view = View::new(format, inventory::print_verify);
            progress.show(stream, view, inventory::verify_clean).await
        }
        Command::Checksum { .. } | Command::Index { .. } => unreachable!("handled by run_local"),
        Command::Deps {
            pack_paths,
            skip_validation,
        } => {
            let stream = client
                .dependencies_stream(pb::DependenciesRequest {
                    pack_paths,
                    skip_validation: Some(skip_validation),
                })
                .await?;
            let view = View::new(format, output::print_dependencies);
            progress
                .show(stream, view, |r| {
                    r.errors.is_empty() && r.missing_dependencies.is_empty()
                })
                .await
        }
    }
}

/// Relative local paths, sent as absolute paths from `cwd` (see `paths`).
fn absolutise(command: &mut Command, cwd: &std::path::Path) {
    use attune_packs_client::paths;
    let sources = |list: &mut Vec<String>| {
        for item in list.iter_mut() {
            *item = paths::source(std::mem::take(item), cwd);
        }
    };
    let base = |dir: &mut Option<String>| {
        if let Some(dir) = dir {
            *dir = paths::directory(std::mem::take(dir), cwd);
        }
    };
    match command {
        Command::Download {
            packs,
            destination_dir,
            ..
        } => {
            sources(packs);
            *destination_dir = paths::directory(std::mem::take(destination_dir), cwd);
        }
        Command::Install {
            packs,
            packs_base_dir,
            ..
        } => {
            sources(packs);
            base(packs_base_dir);
        }
        Command::BuildEnvs {
            pack_paths,
            packs_base_dir,
            ..
        }
        | Command::Register {
            pack_paths,
            packs_base_dir,
            ..
        } => {
            sources(pack_paths);
            base(packs_base_dir);
        }
        Command::Deps { pack_paths, .. } => sources(pack_paths),
        _ => {}
    }
}

/// A lock file: the lock itself, or a saved install result (`{"data": …}` from the
/// REST gateway, or the result as `--json` prints it).
fn read_lock(path: &std::path::Path) -> anyhow::Result<pb::InstallLock> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    for key in ["data", "lock"] {
        if let Some(inner) = value.get_mut(key).map(serde_json::Value::take) {
            value = inner;
        }
    }
    let lock: pb::InstallLock = serde_json::from_value(value)
        .with_context(|| format!("{} is not an install lock", path.display()))?;
    anyhow::ensure!(!lock.packs.is_empty(), "{} locks no packs", path.display());
    Ok(lock)
}

/// Exit 1 when something needs attention (a failed pack, a missing dependency), so
/// scripts can branch on it; 2 is reserved for errors of the call itself.
fn exit_code(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[derive(Clone, Copy)]
enum Format {
    Table,
    Json,
    Yaml,
}

/// How a result is printed: the command's table, JSON or YAML.
struct View<R> {
    format: Format,
    table: fn(&R),
}

impl<R: serde::Serialize> View<R> {
    fn new(format: Format, table: fn(&R)) -> Self {
        Self { format, table }
    }

    fn print(&self, result: &R) -> anyhow::Result<()> {
        match self.format {
            Format::Json => output::print_json(result),
            Format::Yaml => output::print_yaml(result),
            Format::Table => {
                (self.table)(result);
                Ok(())
            }
        }
    }
}

/// Progress lines on stderr, so that stdout carries only the result.
struct Progress {
    quiet: bool,
    terminal: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        Self {
            quiet,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Drives the call, prints its result, and says whether it was clean.
    async fn show<R: serde::Serialize>(
        &self,
        stream: EventStream<R>,
        view: View<R>,
        clean: impl FnOnce(&R) -> bool,
    ) -> anyhow::Result<ExitCode> {
        let result = self.drive(stream).await?;
        view.print(&result)?;
        Ok(exit_code(clean(&result)))
    }

    /// A progress bar on a terminal; plain lines otherwise (logs, pipes, CI).
    async fn drive<R>(&self, stream: EventStream<R>) -> anyhow::Result<R> {
        if self.quiet {
            return Ok(finish(stream, |_| {}).await?);
        }
        if !self.terminal {
            return Ok(finish(stream, |p| eprintln!("{}", output::progress_line(p, false))).await?);
        }
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bar:30} {pos}/{len} {wide_msg}")
                .expect("a valid progress template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let result = finish(stream, |p| {
            if let (Some(done), Some(total)) = (p.done, p.total) {
                bar.set_length(total);
                bar.set_position(done);
            }
            bar.set_message(format!("{}: {}", p.pack, p.message));
            if p.level != attune_packs_client::pb::progress::Level::Info as i32 {
                bar.println(output::progress_line(p, true));
            }
        })
        .await;
        bar.finish_and_clear();
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of `cmd` and its subcommands, with the path of commands to it.
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_string(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    fn built() -> clap::Command {
        let mut cmd = Cli::command();
        // Propagates the global options into every subcommand, as parsing does.
        cmd.build();
        cmd
    }

    #[test]
    fn every_argument_of_every_command_has_help() {
        let cmd = built();
        let mut args = Vec::new();
        walk(&cmd, "attune-packs", &mut args);
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| !a.is_hide_set())
            .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|(path, a)| format!("{path}: {}", a.get_id()))
            .collect();
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
        // The walk reached the nested commands (and the arguments they inherit).
        assert!(
            args.iter()
                .any(|(p, a)| p == "attune-packs index merge" && a.get_id() == "output")
        );
        assert!(
            args.iter()
                .any(|(p, a)| p == "attune-packs install" && a.get_id() == "python_version")
        );
    }

    fn help_of(path: &[&str]) -> String {
        let mut cmd = built();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).unwrap();
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn local_tools_do_not_offer_server_options() {
        for path in [
            &["checksum"][..],
            &["index"],
            &["index", "entry"],
            &["index", "update"],
            &["index", "merge"],
        ] {
            let help = help_of(path);
            assert!(!help.contains("--server"), "{path:?}: {help}");
            assert!(!help.contains("--token"), "{path:?}: {help}");
            assert!(help.contains("--json"), "{path:?}: {help}");
        }
        // The commands that call the server still document both.
        let help = help_of(&["deps"]);
        assert!(
            help.contains("--server") && help.contains("--token"),
            "{help}"
        );
    }

    #[test]
    fn local_tools_still_accept_server_options() {
        for args in [
            &["attune-packs", "--server", "http://x:1", "checksum", "p"][..],
            &["attune-packs", "checksum", "--token", "t", "p"],
            &[
                "attune-packs",
                "index",
                "entry",
                "--server",
                "http://x:1",
                "p",
            ],
        ] {
            let parsed = <Cli as clap::Parser>::try_parse_from(args);
            assert!(parsed.is_ok(), "{args:?}: {:?}", parsed.err());
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "attune-packs",
            "--server",
            "http://x:1",
            "deps",
            "/p",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://x:1");
    }
}
