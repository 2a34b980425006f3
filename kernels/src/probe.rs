//! Finding the CUDA libraries and devices without panicking.
//!
//! cudarc loads each library by name on first use and panics if it is absent,
//! so nothing here calls into a library before checking it with
//! `is_culib_present()`. Before that check, [`load_libraries`] looks for the
//! libraries where CUDA 13 installs put them — `$M2T_CUDA_LIBS`, the CUDA
//! toolkit, the project's `.deps` folder and Python environments'
//! `site-packages/nvidia/*/lib` (PyTorch ships cuDNN and cuBLAS there) — and
//! loads each by full path. The dynamic loader then resolves cudarc's
//! by-name loads to the copy already loaded (same soname), so no
//! `LD_LIBRARY_PATH` is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One CUDA library and what was found of it.
#[derive(Clone, Debug)]
pub struct Library {
    /// `driver`, `nvrtc`, `cublas` or `cudnn`.
    pub name: &'static str,
    /// Where it was loaded from, if present.
    pub path: Option<PathBuf>,
    /// Its version, if present.
    pub version: Option<String>,
}

/// A GPU the driver reports.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Total memory in bytes.
    pub memory_bytes: usize,
    /// Peak memory bandwidth in bytes/s, from the memory clock and bus width
    /// (0 where the driver does not say).
    pub memory_bandwidth: f64,
}

/// Everything [`probe`] found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The four libraries, present or not.
    pub libraries: Vec<Library>,
    /// The devices, or why none can be used.
    pub devices: Result<Vec<DeviceInfo>, String>,
}

impl Report {
    /// The first usable device, or a sentence saying what is missing.
    pub fn usable(&self) -> Result<&DeviceInfo, String> {
        // Without the driver there is no GPU to speak of, whatever else is found.
        if self
            .libraries
            .iter()
            .any(|l| l.name == "driver" && l.path.is_none())
        {
            return Err("no CUDA driver (libcuda.so) on this machine".into());
        }
        let missing: Vec<&str> = self
            .libraries
            .iter()
            .filter(|l| l.path.is_none())
            .map(|l| l.name)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "CUDA libraries not found: {} (searched $M2T_CUDA_LIBS, $LD_LIBRARY_PATH, the CUDA toolkit and Python site-packages/nvidia/*/lib)",
                missing.join(", ")
            ));
        }
        match &self.devices {
            Ok(d) if d.is_empty() => Err("the CUDA driver reports no GPU".into()),
            Ok(d) => Ok(&d[0]),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Each library loaded from a folder: its main file, and the files it needs
/// beside it (a `*` matches any run of characters). cuDNN opens its
/// sub-libraries by name at run time and the set changes between releases
/// (9.20 added one), so every `libcudnn_*` of the folder goes with it.
const GROUPS: &[(&str, &str, &[&str])] = &[
    ("nvrtc", "libnvrtc.so.13", &["libnvrtc-builtins.so.13.0"]),
    ("cublas", "libcublas.so.13", &["libcublasLt.so.13"]),
    ("cudnn", "libcudnn.so.9", &["libcudnn_*.so.9"]),
];

/// Whether file name `name` matches `pattern` (at most one `*`).
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
        None => name == pattern,
    }
}

/// The files of `dir` to load for a library: the companions matching
/// `beside` (sorted), then `main`.
fn group_files(dir: &Path, main: &str, beside: &[&str]) -> Vec<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| beside.iter().any(|p| matches(p, n)))
        .collect();
    names.sort();
    names.push(main.to_string());
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// Folders that may hold CUDA libraries, most specific first.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let split = |v: &str| {
        v.split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect::<Vec<_>>()
    };
    if let Ok(v) = std::env::var("M2T_CUDA_LIBS") {
        dirs.extend(split(&v));
    }
    if let Ok(v) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(split(&v));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(v) = std::env::var(var) {
            dirs.push(Path::new(&v).join("lib64"));
            dirs.push(Path::new(&v).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    // Python environments: the project's own NVRTC install, virtualenvs, conda, system.
    let mut roots: Vec<PathBuf> = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps")];
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Ok(v) = std::env::var(var) {
            roots.push(PathBuf::from(v));
        }
    }
    roots.extend(
        [
            "/usr/local",
            "/usr",
            "/opt/conda",
            "/opt/torchenv",
            "/opt/venv",
        ]
        .map(PathBuf::from),
    );
    if let Ok(home) = std::env::var("HOME") {
        roots.push(Path::new(&home).join(".local"));
    }
    for root in roots {
        for site in site_packages(&root) {
            if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
                let mut libs: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path().join("lib"))
                    .filter(|p| p.is_dir())
                    .collect();
                libs.sort();
                dirs.extend(libs);
            }
        }
    }
    dirs
}

/// `root` itself (a `pip --target` folder) and `root/lib/python3.*/{site,dist}-packages`.
fn site_packages(root: &Path) -> Vec<PathBuf> {
    let mut found = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root.join("lib")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                found.push(e.path().join("site-packages"));
                found.push(e.path().join("dist-packages"));
            }
        }
    }
    found
}

/// Whether cudarc's own by-name load of library `name` would succeed.
fn loadable_by_name(name: &str) -> bool {
    // SAFETY: each check only tries to dlopen the library.
    unsafe {
        match name {
            "nvrtc" => cudarc::nvrtc::sys::is_culib_present(),
            "cublas" => cudarc::cublas::sys::is_culib_present(),
            _ => cudarc::cudnn::sys::is_culib_present(),
        }
    }
}

/// Loads, once per process, each CUDA library that the dynamic loader cannot
/// find by name, from the first folder of [`search_dirs`] holding it: all
/// files of one library from that one folder, so a library and its
/// sub-libraries are of one version (cuDNN refuses a mix). A library the
/// loader finds by itself is left to it, for the same reason. Missing
/// libraries are skipped; [`probe`] reports them.
pub fn load_libraries() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dirs = search_dirs();
        for (name, main, beside) in GROUPS {
            if loadable_by_name(name) {
                continue;
            }
            let Some(dir) = dirs.iter().find(|d| d.join(main).exists()) else {
                continue;
            };
            // A file whose own dependencies are not loaded yet fails; it is
            // tried again once others have loaded, until nothing more loads.
            let mut pending = group_files(dir, main, beside);
            loop {
                let before = pending.len();
                // SAFETY: loading a CUDA library runs only its initialisers.
                pending.retain(|path| match unsafe { libloading::Library::new(path) } {
                    Ok(lib) => {
                        // Kept for the life of the process, like cudarc's own handles.
                        std::mem::forget(lib);
                        false
                    }
                    Err(_) => true,
                });
                if pending.is_empty() || pending.len() == before {
                    break;
                }
            }
        }
    });
}

/// The folders that files of `stem` (`libcudnn`, …) mapped into this
/// process come from, each with its file names.
pub fn loaded_folders(stem: &str) -> Vec<(PathBuf, Vec<String>)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut folders: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        let path = Path::new(path);
        let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let file = file.to_string_lossy();
        if !file.starts_with(stem) || !file.contains(".so") {
            continue;
        }
        match folders.iter_mut().find(|(d, _)| d == dir) {
            Some((_, files)) if !files.iter().any(|f| *f == file) => files.push(file.into()),
            Some(_) => {}
            None => folders.push((dir.to_path_buf(), vec![file.into()])),
        }
    }
    folders
}

/// The cuDNN files of this process, one line per folder: what to look at
/// when cuDNN reports sub-libraries of different versions.
pub fn cudnn_files() -> String {
    let folders = loaded_folders("libcudnn");
    if folders.is_empty() {
        return "no cuDNN file is loaded".into();
    }
    folders
        .iter()
        .map(|(dir, files)| format!("{}: {}", dir.display(), files.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where a loaded library's file is, read from this process's memory map.
fn loaded_path(stem: &str) -> Option<PathBuf> {
    let main = format!("{stem}.so");
    loaded_folders(stem).into_iter().find_map(|(dir, files)| {
        files
            .iter()
            .find(|f| f.starts_with(&main))
            .map(|f| dir.join(f))
    })
}

/// Whether NVRTC can be loaded (after [`load_libraries`]).
pub fn nvrtc_present() -> bool {
    load_libraries();
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Probes the libraries and devices. Never panics.
pub fn probe() -> Report {
    load_libraries();
    let mut libraries = Vec::new();
    // SAFETY (all blocks below): each library is called only after its
    // presence check, and the calls only read versions.
    let driver = driver_present();
    libraries.push(Library {
        name: "driver",
        path: driver.then(|| loaded_path("libcuda").unwrap_or_else(|| "libcuda.so".into())),
        version: driver.then(|| {
            let mut v = 0;
            unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
            format!("CUDA {}.{}", v / 1000, v % 1000 / 10)
        }),
    });
    let nvrtc = nvrtc_present();
    libraries.push(Library {
        name: "nvrtc",
        path: nvrtc.then(|| loaded_path("libnvrtc").unwrap_or_else(|| "libnvrtc.so".into())),
        version: nvrtc.then(|| {
            let (mut a, mut b) = (0, 0);
            unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
            format!("{a}.{b}")
        }),
    });
    let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
    libraries.push(Library {
        name: "cublas",
        path: cublas.then(|| loaded_path("libcublas").unwrap_or_else(|| "libcublas.so".into())),
        version: cublas.then(|| {
            use cudarc::cublas::sys::{cublasGetProperty, libraryPropertyType};
            let (mut a, mut b, mut c) = (0, 0, 0);
            unsafe {
                cublasGetProperty(libraryPropertyType::MAJOR_VERSION, &mut a);
                cublasGetProperty(libraryPropertyType::MINOR_VERSION, &mut b);
                cublasGetProperty(libraryPropertyType::PATCH_LEVEL, &mut c);
            }
            format!("{a}.{b}.{c}")
        }),
    });
    let cudnn = unsafe { cudarc::cudnn::sys::is_culib_present() };
    libraries.push(Library {
        name: "cudnn",
        path: cudnn.then(|| loaded_path("libcudnn").unwrap_or_else(|| "libcudnn.so".into())),
        version: cudnn.then(|| {
            let v = unsafe { cudarc::cudnn::sys::cudnnGetVersion() };
            format!("{}.{}.{}", v / 10000, v % 10000 / 100, v % 100)
        }),
    });
    let devices = if driver {
        list_devices()
    } else {
        Err("the CUDA driver (libcuda.so) is not installed".into())
    };
    Report { libraries, devices }
}

/// The GPUs, read from the driver without creating contexts (a busy or
/// exclusive-mode GPU does not hide the others, and no memory is taken).
pub fn list_devices() -> Result<Vec<DeviceInfo>, String> {
    use cudarc::driver::result::device;
    use cudarc::driver::sys::CUdevice_attribute as A;
    cudarc::driver::result::init()
        .map_err(|e| format!("CUDA driver initialisation failed: {e}"))?;
    let n = device::get_count().map_err(|e| format!("counting CUDA devices failed: {e}"))?;
    (0..n)
        .map(|ordinal| {
            let err = |e: cudarc::driver::DriverError| format!("CUDA device {ordinal}: {e}");
            let dev = device::get(ordinal).map_err(err)?;
            let mut name = [0 as std::ffi::c_char; 256];
            // SAFETY: `dev` is a valid device handle; the calls only read its properties.
            unsafe {
                let named =
                    cudarc::driver::sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev);
                let name = if named == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                    std::ffi::CStr::from_ptr(name.as_ptr())
                        .to_string_lossy()
                        .into_owned()
                } else {
                    "unknown".into()
                };
                Ok(DeviceInfo {
                    ordinal: ordinal as usize,
                    name,
                    compute_capability: (
                        device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                            .map_err(err)?,
                        device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                            .map_err(err)?,
                    ),
                    memory_bytes: device::total_mem(dev).map_err(err)?,
                    // Double data rate: two transfers per clock.
                    memory_bandwidth: {
                        let khz =
                            device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
                                .unwrap_or(0);
                        let bits = device::get_attribute(
                            dev,
                            A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH,
                        )
                        .unwrap_or(0);
                        2.0 * khz as f64 * 1e3 * bits as f64 / 8.0
                    },
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        assert!(matches("libcudnn_*.so.9", "libcudnn_ops.so.9"));
        assert!(matches(
            "libcudnn_*.so.9",
            "libcudnn_engines_tensor_ir.so.9"
        ));
        assert!(!matches("libcudnn_*.so.9", "libcudnn.so.9"));
        assert!(!matches("libcudnn_*.so.9", "libcudnn_ops.so.8"));
        assert!(matches("libcublasLt.so.13", "libcublasLt.so.13"));
        assert!(!matches("libcublasLt.so.13", "libcublasLt.so.13.1"));
    }

    #[test]
    fn a_group_is_every_companion_then_the_main_file() {
        let dir = std::env::temp_dir().join(format!("m2t-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "libcudnn.so.9",
            "libcudnn_ops.so.9",
            "libcudnn_graph.so.9",
            "libcudnn_ops.so.9.14.0",
            "libcublas.so.13",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let names: Vec<String> = group_files(&dir, "libcudnn.so.9", &["libcudnn_*.so.9"])
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            names,
            ["libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn.so.9"]
        );
    }

    #[test]
    fn loaded_folders_reads_the_memory_map() {
        // Every Linux process maps the C library.
        let folders = loaded_folders("libc");
        assert!(
            folders
                .iter()
                .any(|(_, files)| files.iter().any(|f| f.starts_with("libc.so"))),
            "{folders:?}"
        );
        assert!(loaded_folders("libno-such-library").is_empty());
    }
}
