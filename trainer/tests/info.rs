//! `trainer info`: where the CUDA libraries are loaded from (the trainer
//! re-executes itself once with their folders first on `LD_LIBRARY_PATH`)
//! and `--check`, the smoke test of every backend.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.env("RAYON_NUM_THREADS", "2")
        .env_remove("M2T_LIBRARY_PATH_SET")
        .env_remove("M2T_CUDA_LIBS")
        .env_remove("LD_LIBRARY_PATH");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A folder holding a stand-in cuDNN (not loadable: empty files), complete
/// with every companion library, so that the probe prefers it to a real
/// cuDNN elsewhere on the machine (a PyTorch environment, say).
fn fake_cudnn(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainer-info-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cudnn = kernels::probe::GROUPS
        .iter()
        .find(|g| g.main == "libcudnn.so.9")
        .expect("the probe knows cuDNN");
    for file in [cudnn.main]
        .iter()
        .chain(cudnn.required)
        .chain(cudnn.optional)
    {
        std::fs::write(dir.join(file.trim_end_matches('*')), b"").unwrap();
    }
    dir
}

#[test]
fn the_trainer_runs_with_the_chosen_library_folders_first_on_the_path() {
    let dir = fake_cudnn("path");
    let o = trainer()
        .args(["info", "--library-path"])
        .env("M2T_CUDA_LIBS", &dir)
        .env("LD_LIBRARY_PATH", "/nonexistent-lib")
        .output()
        .unwrap();
    assert!(o.status.success());
    let path = stdout(&o);
    let folders: Vec<&str> = path.trim().split(':').collect();
    let at = |f: &str| folders.iter().position(|p| *p == f);
    assert!(
        at(dir.to_str().unwrap()).is_some()
            && at(dir.to_str().unwrap()) < at("/nonexistent-lib")
            && at("/nonexistent-lib").is_some(),
        "{path}"
    );
    // The re-executed process does not go round again, and a process that
    // was told it already has the path keeps the one it was given.
    let o = trainer()
        .args(["info", "--library-path"])
        .env("M2T_CUDA_LIBS", &dir)
        .env("LD_LIBRARY_PATH", "/nonexistent-lib")
        .env("M2T_LIBRARY_PATH_SET", "1")
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), "/nonexistent-lib");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nvrtc_loads_from_the_folder_put_on_the_path() {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps");
    let Some(lib) = std::fs::read_dir(deps.join("nvidia"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("lib"))
        .find(|l| l.join("libnvrtc.so.13").exists())
    else {
        eprintln!("skipped: no NVRTC in .deps (scripts/install-nvrtc.sh installs it)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs NVRTC into .deps"
        );
        return;
    };
    let lib = lib.canonicalize().unwrap();
    let o = trainer().arg("info").output().unwrap();
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("library path: LD_LIBRARY_PATH="))
        .expect("the library path is reported");
    let folders: Vec<&Path> = path.split(':').map(Path::new).collect();
    // First the links from unversioned names (cudarc asks for
    // `libnvrtc.so` first), then the folder itself.
    assert_eq!(
        std::fs::read_link(folders[0].join("libnvrtc.so")).ok(),
        Some(lib.join("libnvrtc.so.13")),
        "{text}"
    );
    assert_eq!(folders.get(1), Some(&lib.as_path()), "{text}");
    assert!(
        text.contains(&format!("({}/libnvrtc.so.13)", lib.display())),
        "{text}"
    );
}

#[test]
fn check_tests_the_cpu_and_the_emulator_and_says_there_is_no_gpu() {
    let o = trainer().args(["info", "--check"]).output().unwrap();
    let text = stdout(&o);
    if text.contains("--device auto uses cuda:") {
        eprintln!("skipped: this machine has a GPU; the no-GPU report is not shown");
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("no GPU: "), "{text}");
    for line in [
        "pass  cpu       convolution f32 forward+backward",
        "pass  cpu       matrix product f32 forward+backward",
        "pass  emulator  convolution bf16 forward+backward",
        "pass  emulator  M2T step f32 (all training kernels)",
        "pass  emulator  M2T step bf16 (all training kernels, casts)",
        "pass  emulator  augmentation (view kernels)",
        "pass  emulator  kNN vote (unit rows, top-k, vote)",
        "all checks passed",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn nccl_is_reported_with_its_version_and_file() {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/nvidia/nccl/lib");
    if !deps.join("libnccl.so.2").exists() {
        eprintln!("skipped: no NCCL in .deps (scripts/install-nccl.sh installs it)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs NCCL into .deps"
        );
        return;
    }
    let lib = deps.canonicalize().unwrap().join("libnccl.so.2");
    let o = trainer().arg("info").output().unwrap();
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cuda nccl: "))
        .unwrap_or_else(|| panic!("no NCCL line in\n{text}"));
    let (version, path) = line.split_once(' ').unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        parts.len() == 3 && parts[0] == 2 && parts[1] >= 18,
        "{line}"
    );
    assert_eq!(path, format!("({})", lib.display()), "{text}");
}

#[test]
fn a_missing_nccl_is_reported_as_not_found_and_info_succeeds() {
    // An NCCL the probe prefers (first in M2T_CUDA_LIBS) that cannot load.
    let dir = std::env::temp_dir().join(format!("trainer-info-{}-nccl", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("libnccl.so.2"), b"").unwrap();
    let o = trainer()
        .arg("info")
        .env("M2T_CUDA_LIBS", &dir)
        .output()
        .unwrap();
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cuda nccl: not found (only data parallel on more than one GPU needs it"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
