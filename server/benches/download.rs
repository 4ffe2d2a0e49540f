//! Download of a local ~100 MB, ~10,000-file `.tar.gz` (extract + checksum + atomic
//! placement, through the real Download stage) against the shell approach the original
//! implementation used (`tar xzf` then `sha256sum` over every file); and the directory
//! checksum against `find … | sort | xargs sha256sum`.
//!
//! Run: `cargo bench -p attune-packs-server --bench download`.
//! The two sides alternate, outputs are deleted and `sync`ed before every timed run
//! (write-back dominates on this machine, see machine-notes), and medians of 5 are
//! reported with their ratio. `BENCH_DIR` (default /tmp) picks the filesystem.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use attune_packs_server::{
    checksum::directory_checksum,
    config::{Config, Overrides},
    download::{DownloadRequest, Downloader},
    locks::PackLocks,
    paths::PathPolicy,
    progress::Reporter,
};

const ROUNDS: usize = 5;

/// 10,000 files in 100 directories, ~100 MB, half pseudo-random and half text so
/// gzip has work to do. Built once and reused (`.complete` marks it done).
fn build_tree(root: &Path) -> u64 {
    if let Ok(total) = std::fs::read_to_string(root.join(".complete")) {
        return total.trim().parse().unwrap();
    }
    let _ = std::fs::remove_dir_all(root);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut total = 0u64;
    for d in 0..100 {
        let dir = root.join(format!("dir{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let size = if (d * 100 + f) % 1000 == 0 {
                1024 * 1024
            } else {
                (next() % 18_000) as usize
            };
            let mut buf = Vec::with_capacity(size + 8);
            while buf.len() < size {
                let v = next();
                if buf.len() % 64 < 32 {
                    buf.extend_from_slice(&v.to_le_bytes());
                } else {
                    buf.extend_from_slice(b"lorem ip");
                }
            }
            buf.truncate(size);
            total += size as u64;
            std::fs::write(dir.join(format!("file{f:03}.txt")), &buf).unwrap();
        }
    }
    std::fs::write(root.join("pack.yaml"), "ref: bench\nversion: 1.0.0\n").unwrap();
    std::fs::write(root.join(".complete"), total.to_string()).unwrap();
    total
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(status.success(), "{cmd}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(name: &str, ours: Vec<Duration>, shell: Vec<Duration>) {
    let (o, s) = (median(ours.clone()), median(shell.clone()));
    println!("{name}");
    println!(
        "  ours   median {:>8.3} s   runs {:?}",
        o.as_secs_f64(),
        secs(&ours)
    );
    println!(
        "  shell  median {:>8.3} s   runs {:?}",
        s.as_secs_f64(),
        secs(&shell)
    );
    println!(
        "  ratio ours/shell {:.2}",
        o.as_secs_f64() / s.as_secs_f64()
    );
}

fn secs(v: &[Duration]) -> Vec<String> {
    v.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect()
}

#[tokio::main]
async fn main() {
    let base = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()));
    let tree = base.join("attune-bench").join("bench");
    let bytes = build_tree(&tree);
    let archive = base.join("attune-bench.tar.gz");
    if !archive.exists() {
        // One top-level directory, names sorted: the shape of a git forge tarball.
        sh(&format!(
            "tar czf {a}.tmp --sort=name --exclude=.complete -C {p} bench && mv {a}.tmp {a}",
            a = archive.display(),
            p = tree.parent().unwrap().display()
        ));
    }
    println!(
        "tree: 10,000 files, {:.0} MB; archive {:.0} MB",
        bytes as f64 / 1e6,
        std::fs::metadata(&archive).unwrap().len() as f64 / 1e6
    );

    // Directory checksum, page cache warm.
    let (mut ours, mut shell) = (Vec::new(), Vec::new());
    directory_checksum(&tree).unwrap();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        directory_checksum(&tree).unwrap();
        ours.push(t.elapsed());
        let t = Instant::now();
        sh(&format!(
            "cd {} && find . -type f ! -name .complete | sort | xargs sha256sum > /dev/null",
            tree.display()
        ));
        shell.push(t.elapsed());
    }
    report(
        "directory checksum vs find | sort | xargs sha256sum (warm cache)",
        ours,
        shell,
    );

    // Download stage (local archive source) vs tar xzf + sha256sum of every file.
    let ours_dest = base.join("attune-bench-ours");
    let shell_dest = base.join("attune-bench-shell");
    let mut config = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
    config.allowed_roots = Some(vec![base.canonicalize().unwrap()]);
    let downloader = Arc::new(
        Downloader::new(
            &config.download,
            &config.registry,
            PathPolicy::new(config.allowed_roots()),
            PackLocks::default(),
        )
        .unwrap(),
    );
    let clean = || {
        let _ = std::fs::remove_dir_all(&ours_dest);
        let _ = std::fs::remove_dir_all(&shell_dest);
        sh("sync");
    };
    let (mut ours, mut shell) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        clean();
        let t = Instant::now();
        let result = downloader
            .download(
                DownloadRequest {
                    packs: vec![archive.display().to_string()],
                    destination_dir: ours_dest.display().to_string(),
                    registry_url: None,
                    ref_spec: None,
                    timeout: Duration::from_secs(600),
                    verify_ssl: true,
                    force: false,
                },
                &Reporter::noop(),
            )
            .await
            .unwrap();
        ours.push(t.elapsed());
        assert_eq!(result.downloaded.len(), 1, "{:?}", result.failed);

        clean();
        std::fs::create_dir_all(&shell_dest).unwrap();
        let t = Instant::now();
        sh(&format!(
            "tar xzf {} -C {d} && cd {d} && find . -type f -print0 | sort -z | xargs -0 sha256sum > /dev/null",
            archive.display(),
            d = shell_dest.display()
        ));
        shell.push(t.elapsed());
    }
    clean();
    report(
        "download (local .tar.gz: extract + checksum + place) vs tar xzf && sha256sum",
        ours,
        shell,
    );
}
