//! Dependency resolution for Install's dry run: 500 requested packs with 3
//! dependencies each over an index of 5,000 entries (target: under 1 s).
//!
//! Run: `cargo bench -p attune-packs-server --bench solver`.
//!
//! Catalog: p0..p4999, each at 1.0.0, 1.1.0 and 2.0.0. Each version depends
//! on 3 higher-numbered refs (a DAG), with `^1` or `>=1.0` requirements that
//! can all be met. 500 roots, each requesting `^1` or `>=1.0` of a pack that
//! has 3 dependencies.

use std::time::{Duration, Instant};

use attune_packs_server::dependency::solver::{Catalog, Root, solve};
use semver::{Version, VersionReq};

const PACKS: usize = 5_000;
const ROOTS: usize = 500;

fn main() {
    let versions = ["1.0.0", "1.1.0", "2.0.0"].map(|v| Version::parse(v).unwrap());
    let caret1 = VersionReq::parse("^1").unwrap();
    let at_least1 = VersionReq::parse(">=1.0").unwrap();
    let mut catalog = Catalog::new();
    let mut entries = 0;
    for i in 0..PACKS {
        for (vi, version) in versions.iter().enumerate() {
            // Deterministic pseudo-random targets among higher refs.
            let deps: Vec<(String, VersionReq)> = (0..3u64)
                .filter_map(|k| {
                    let span = (PACKS - i - 1) as u64;
                    if span == 0 {
                        return None;
                    }
                    let h = (i as u64 * 2_654_435_761 + k * 40_503 + vi as u64 * 97)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let target = i + 1 + (h % span.min(200)) as usize;
                    let req = if (h >> 32).is_multiple_of(3) {
                        &at_least1
                    } else {
                        &caret1
                    };
                    Some((format!("p{target}"), req.clone()))
                })
                .collect();
            catalog.add(&format!("p{i}"), version.clone(), deps);
            entries += 1;
        }
    }
    let roots: Vec<Root> = (0..ROOTS)
        .map(|r| Root {
            pack_ref: format!("p{}", r * 7),
            req: if r.is_multiple_of(2) {
                caret1.clone()
            } else {
                at_least1.clone()
            },
        })
        .collect();

    let mut times: Vec<Duration> = Vec::new();
    let mut planned = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let plan = solve(&catalog, &roots, &|| false).expect("benchmark catalog is solvable");
        times.push(start.elapsed());
        planned = plan.packs.len();
    }
    times.sort();
    println!(
        "catalog: {PACKS} refs, {entries} versions; {ROOTS} roots; plan: {planned} packs; solve median of 5: {:.1} ms (min {:.1}, max {:.1})",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3
    );
}
