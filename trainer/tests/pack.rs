//! End-to-end: `trainer pack`, `trainer info --data` on a pack, `trainer
//! bench --loader`, and pretraining from a pack against the folder it was
//! packed from.

use std::path::{Path, PathBuf};

mod common;
use common::run;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainer-pack-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The committed two-class ImageFolder fixture.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagefolder")
}

/// Packs the fixture (sizes kept: 8×8 is under the default max side) into
/// `dir` with 2 workers and returns the pack's path.
fn pack_fixture(dir: &Path) -> PathBuf {
    let pack = dir.join("fixture.m2tpack");
    let (data, out) = (fixture(), pack.clone());
    let o = run(&[
        "pack",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("packed 8 images (8 train, 0 val) of 2 classes"));
    pack
}

/// Runs 3 steps of a tiny pretraining on `data` into `out` and returns
/// the logged losses as bit patterns.
fn pretrain_losses(data: &Path, out: &Path) -> Vec<u64> {
    let o = run(&[
        "--arch",
        "resnet18",
        "--bs",
        "4",
        "--width",
        "4",
        "--proj-hidden",
        "16",
        "--proj-out",
        "8",
        "--res",
        "8",
        "--steps",
        "3",
        "--log-every",
        "1",
        "--workers",
        "2",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].as_f64().unwrap().to_bits()
        })
        .collect()
}

#[test]
fn pretraining_from_a_lossless_size_pack_equals_the_folder() {
    let dir = tmp("same");
    let pack = pack_fixture(&dir);

    let folder = pretrain_losses(&fixture(), &dir.join("from-folder"));
    let packed = pretrain_losses(&pack, &dir.join("from-pack"));
    assert_eq!(folder.len(), 3);
    assert_eq!(folder, packed, "same images, same batches, same losses");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_describes_a_pack_and_names_corrupt_records() {
    let dir = tmp("info");
    let pack = pack_fixture(&dir);
    let o = run(&["info", "--data", pack.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for needle in [
        "pack train: 8 images",
        "format version 1, 8 records (8 train, 0 val)",
        "classes (2): horizontal, vertical",
        "checksums: all 8 records ok",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }

    // A flipped byte in the first record: info names it and fails; a
    // training run skips it like a bad file.
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[64 + 20] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    let o = run(&["info", "--data", pack.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("record 0 (horizontal/0.png): checksum mismatch"),
        "{err}"
    );

    // Cut short: a one-line data error, no panic.
    std::fs::write(&pack, &bytes[..bytes.len() - 5]).unwrap();
    let o = run(&["info", "--data", pack.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("truncated or corrupt pack") && !err.contains("panicked"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loader_benchmark_reports_rates_and_the_time_split() {
    for augment in ["host", "device"] {
        let o = run(&[
            "bench",
            "--loader",
            "--data",
            fixture().to_str().unwrap(),
            "--res",
            "8",
            "--bs",
            "4",
            "--workers",
            "2",
            "--batches",
            "20",
            "--augment",
            augment,
            "--device",
            "cpu",
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
        assert!(v["pairs_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(
            (v["workers"].as_u64(), v["augment"].as_str()),
            (Some(2), Some(augment))
        );
        let ms = &v["ms_per_pair"];
        assert!(ms["decode"].as_f64().unwrap() > 0.0, "{v}");
        let last = if augment == "host" {
            "augment"
        } else {
            "assemble"
        };
        assert!(ms[last].as_f64().is_some(), "{v}");
    }
    for (flags, needle) in [
        (&["bench", "--loader"][..], "--data"),
        (
            &[
                "bench",
                "--loader",
                "--data",
                "/nonexistent",
                "--augment",
                "gpu",
            ],
            "--augment gpu",
        ),
        (
            &[
                "bench",
                "--loader",
                "--data",
                "/nonexistent",
                "--decoder",
                "x",
            ],
            "unknown decoder",
        ),
        (
            &[
                "pack",
                "--data",
                "/nonexistent",
                "--out",
                "/tmp/x",
                "--quality",
                "0",
            ],
            "--quality 0",
        ),
    ] {
        let o = run(flags);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(needle),
            "{flags:?}: {}",
            text(&o.stderr)
        );
    }
}
