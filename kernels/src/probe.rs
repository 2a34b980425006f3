//! Finding the CUDA libraries and devices without panicking.
//!
//! cudarc loads each library by name on first use and panics if it is absent,
//! so nothing here calls into a library before checking it with
//! `is_culib_present()`. The libraries are looked for where CUDA 13 installs
//! put them — `$M2T_CUDA_LIBS`, `$LD_LIBRARY_PATH`, the CUDA toolkit, the
//! project's `.deps` folder and every Python environment's
//! `site-packages/nvidia/*/lib` (PyTorch ships cuDNN and cuBLAS there) — and
//! one folder is chosen per library ([`library_folders`]).
//!
//! cuDNN opens its sub-libraries by bare name while it runs, some only when
//! an engine first needs them. For those loads to find the chosen folder and
//! no other copy, the folder must be on the dynamic loader's search path from
//! the process's start: [`reexec_with_library_path`] re-executes the program
//! once with the chosen folders first on `LD_LIBRARY_PATH` (the trainer does
//! this first thing in `main`). A program that embeds the engine and cannot
//! re-execute gets [`load_libraries`]' fallback instead: each library's main
//! file and its required companions loaded by full path, so cudarc's by-name
//! loads resolve to them; cuDNN's optional engines then load only from the
//! search path.
//!
//! NCCL, which only data parallel on more than one GPU needs, is placed the
//! same way but reported apart ([`nccl`]): a machine without it still has a
//! usable GPU. cudarc opens it only as `libnccl.so`, a name the wheels do not
//! ship and a full-path load of `libnccl.so.2` does not answer, so NCCL
//! loads only through the library path (the unversioned link).

use std::ffi::OsString;
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

/// A library the engine loads from one folder: its main file, the files it
/// opens by name beside it, and files it may open that some installs lack.
pub struct Group {
    /// `nvrtc`, `nvjitlink`, `cublas`, `cudnn` or `nccl`.
    pub name: &'static str,
    /// The file cudarc opens (by its soname).
    pub main: &'static str,
    /// Companions the library cannot work without.
    pub required: &'static [&'static str],
    /// Companions loaded only when needed, missing from some installs (cuDNN
    /// 9 wheels without `libcudnn_engines_tensor_ir`): a folder that has them
    /// is preferred.
    pub optional: &'static [&'static str],
}

/// The libraries to place, in loading order. nvJitLink is not called by
/// the engine; cuDNN's runtime-compiled engines and NVRTC may open it by
/// name, so it goes from the same install.
pub const GROUPS: &[Group] = &[
    Group {
        name: "nvrtc",
        main: "libnvrtc.so.13",
        required: &["libnvrtc-builtins.so.13.*"],
        optional: &[],
    },
    Group {
        name: "nvjitlink",
        main: "libnvJitLink.so.13",
        required: &[],
        optional: &[],
    },
    Group {
        name: "cublas",
        main: "libcublas.so.13",
        required: &["libcublasLt.so.13"],
        optional: &[],
    },
    Group {
        name: "cudnn",
        main: "libcudnn.so.9",
        // Dependency order: the graph library first, engines last.
        required: &[
            "libcudnn_graph.so.9",
            "libcudnn_ops.so.9",
            "libcudnn_cnn.so.9",
            "libcudnn_adv.so.9",
            "libcudnn_heuristic.so.9",
            "libcudnn_engines_precompiled.so.9",
            "libcudnn_engines_runtime_compiled.so.9",
        ],
        optional: &["libcudnn_engines_tensor_ir.so.9"],
    },
    Group {
        name: "nccl",
        main: "libnccl.so.2",
        required: &[],
        optional: &[],
    },
];

impl Group {
    /// The companions of `self` that `dir` lacks: required ones, then optional.
    pub fn missing_in(&self, dir: &Path) -> (Vec<&'static str>, Vec<&'static str>) {
        let absent = |names: &[&'static str]| {
            names
                .iter()
                .copied()
                .filter(|n| find_file(dir, n).is_none())
                .collect::<Vec<_>>()
        };
        (absent(self.required), absent(self.optional))
    }
}

/// The file of `dir` named `name`, where a trailing `*` matches any ending
/// (`libnvrtc-builtins.so.13.*`: the minor version changes between releases).
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    match name.strip_suffix('*') {
        None => Some(dir.join(name)).filter(|p| p.exists()),
        Some(prefix) => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect();
            found.sort();
            found.pop()
        }
    }
}

/// The folder of `dirs` to load `group` from: of those holding its main
/// file, the first with every required companion and the most optional
/// ones; failing that, the first holding the main file.
pub fn choose_folder(dirs: &[PathBuf], group: &Group) -> Option<PathBuf> {
    let mut best: Option<(&PathBuf, (bool, usize))> = None;
    for dir in dirs.iter().filter(|d| d.join(group.main).exists()) {
        let (required, optional) = group.missing_in(dir);
        let score = (required.is_empty(), group.optional.len() - optional.len());
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((dir, score));
        }
    }
    best.map(|(d, _)| d.clone())
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
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for root in python_roots(Path::new("/opt"), home.as_deref()) {
        dirs.extend(nvidia_lib_dirs(&root));
    }
    dirs
}

/// Python environments, active or not: the project's own NVRTC install, the
/// active virtualenv or conda environment, every environment under `opt`
/// (`/opt/X`, `/opt/X/.venv`, `/opt/X/venv`, `/opt/conda/envs/X`), the
/// system's, and the user's.
pub fn python_roots(opt: &Path, home: Option<&Path>) -> Vec<PathBuf> {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps");
    let mut roots: Vec<PathBuf> = vec![deps.canonicalize().unwrap_or(deps)];
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            roots.push(PathBuf::from(v));
        }
    }
    let subfolders = |dir: &Path| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        found
    };
    for env in subfolders(opt) {
        roots.push(env.clone());
        roots.extend([".venv", "venv"].map(|v| env.join(v)));
        roots.extend(subfolders(&env.join("envs")));
    }
    roots.extend(["/usr/local", "/usr"].map(PathBuf::from));
    if let Some(home) = home {
        roots.extend([".local", ".venv", "venv", "miniconda3", "anaconda3"].map(|v| home.join(v)));
    }
    roots.retain(|r| r.is_dir());
    roots
}

/// The `nvidia/*/lib` folders of the environment at `root`.
fn nvidia_lib_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for site in site_packages(root) {
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
    dirs
}

/// `root` itself (a `pip --target` folder) and `root/lib/python3*/{site,dist}-packages`.
fn site_packages(root: &Path) -> Vec<PathBuf> {
    let mut found = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root.join("lib")) {
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for p in pythons {
            found.push(p.join("site-packages"));
            found.push(p.join("dist-packages"));
        }
    }
    found
}

/// Whether the dynamic loader finds `soname` by name, as cudarc will ask.
fn loadable_by_name(soname: &str) -> bool {
    // SAFETY: only tries to dlopen the library, which runs its initialisers.
    unsafe { libloading::Library::new(soname) }.is_ok()
}

/// Each library the dynamic loader does not find by name, with the folder
/// chosen for it. A library the loader finds is left to it: its by-name
/// loads of companions then resolve the same way.
pub fn library_folders() -> Vec<(&'static str, PathBuf)> {
    let dirs = search_dirs();
    GROUPS
        .iter()
        .filter_map(|g| {
            let dir = choose_folder(&dirs, g)?;
            (!loadable_by_name(g.main)).then_some((g.name, dir))
        })
        .collect()
}

/// Set in the environment of a re-executed program, so it does not loop.
const REEXECUTED: &str = "M2T_LIBRARY_PATH_SET";

/// `LD_LIBRARY_PATH` with `folders` first (each once), then `current`'s.
pub fn library_path_with(folders: &[PathBuf], current: Option<&str>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let rest = current.unwrap_or("").split(':').filter(|s| !s.is_empty());
    for p in folders
        .iter()
        .map(|f| f.display().to_string())
        .chain(rest.map(String::from))
    {
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join(":")
}

/// The unversioned name of a library file: `libcudnn.so` for `libcudnn.so.9`.
fn unversioned(main: &str) -> &str {
    main.find(".so").map_or(main, |end| &main[..end + 3])
}

/// A folder under `base` of links from each chosen library's unversioned
/// name to its file. cudarc asks for `libcudnn.so` (and `libcublas.so`,
/// `libnvrtc.so`) before the versioned names; Python wheels ship only the
/// versioned files, so without these links that first request would find
/// whatever copy the system keeps under the unversioned name. Named by a
/// hash of the targets, so every set of choices has its own folder.
pub fn link_unversioned(
    chosen: &[(&'static str, PathBuf)],
    base: &Path,
) -> std::io::Result<PathBuf> {
    let targets: Vec<(String, PathBuf)> = chosen
        .iter()
        .filter_map(|(name, dir)| {
            let group = GROUPS.iter().find(|g| g.name == *name)?;
            Some((unversioned(group.main).to_string(), dir.join(group.main)))
        })
        .collect();
    // FNV-1a over the targets: stable across runs and builds.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, target) in &targets {
        for b in target.as_os_str().as_encoded_bytes() {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let folder = base.join(format!("{hash:016x}"));
    std::fs::create_dir_all(&folder)?;
    for (name, target) in targets {
        let link = folder.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
            // Another process may have made the same link meanwhile.
            if std::fs::read_link(&link).ok() != Some(target) {
                return Err(e);
            }
        }
    }
    Ok(folder)
}

/// Where [`library_path`] keeps its links: the user's cache, never a
/// shared temporary folder another user could fill with links of their own.
fn links_base() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("m2t").join("cuda-libs"))
}

/// The `LD_LIBRARY_PATH` the CUDA libraries need: the unversioned links,
/// then the chosen folders, then what was there. `None` when no folder has
/// to be added.
pub fn library_path() -> Option<String> {
    let chosen = library_folders();
    let mut folders: Vec<PathBuf> = Vec::new();
    if !chosen.is_empty()
        && let Some(links) = links_base().and_then(|base| link_unversioned(&chosen, &base).ok())
    {
        folders.push(links);
    }
    folders.extend(chosen.into_iter().map(|(_, d)| d));
    let current = std::env::var("LD_LIBRARY_PATH").ok();
    let wanted = library_path_with(&folders, current.as_deref());
    (!folders.is_empty() && Some(&wanted) != current.as_ref()).then_some(wanted)
}

/// Re-executes this program once with [`library_path`] as `LD_LIBRARY_PATH`,
/// so that cuDNN's own by-name loads of its sub-libraries find the chosen
/// folder. Returns (doing nothing) when no folder is missing from the path,
/// when this process is already the re-executed one, or when `exec` fails;
/// [`load_libraries`] then falls back to loading by full path. Call it first
/// thing in `main`, before other threads exist.
pub fn reexec_with_library_path() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(REEXECUTED).is_some() {
        return;
    }
    let Some(path) = library_path() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("trainer"));
    // `exec` only returns on failure.
    let _failed = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("LD_LIBRARY_PATH", path)
        .env(REEXECUTED, "1")
        .exec();
}

/// Loads, once per process, each CUDA library that the dynamic loader cannot
/// find by name: from its chosen folder, its required companions then its
/// main file, each by full path, so cudarc's by-name loads resolve to them
/// (same soname) and a library and its companions are of one version. The
/// optional companions are left for the library to load when it needs them:
/// loaded ahead of cuDNN they would be initialised wrongly. Missing
/// libraries are skipped; [`probe`] reports them.
pub fn load_libraries() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // A re-executed process has the folders on its search path already;
        // probing them by name again would load each library twice.
        if std::env::var_os(REEXECUTED).is_some() {
            return;
        }
        let folders = library_folders();
        // cudarc asks for `libnccl.so` by name, which no file loaded by its
        // full path answers (see the module's notes).
        for group in GROUPS.iter().filter(|g| g.name != "nccl") {
            let Some((_, dir)) = folders.iter().find(|(n, _)| *n == group.name) else {
                continue;
            };
            // A file whose own dependencies are not loaded yet fails; it is
            // tried again once others have loaded, until nothing more loads.
            let mut pending: Vec<PathBuf> = group
                .required
                .iter()
                .chain([&group.main])
                .filter_map(|f| find_file(dir, f))
                .collect();
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

/// The cuDNN and CUDA runtime versions the engine is written for: cuDNN 9
/// built against CUDA 13. `Err` names the mismatch. `version` and `cudart`
/// are `cudnnGetVersion()` (major·10000 + minor·100 + patch) and
/// `cudnnGetCudartVersion()` (major·1000 + minor·10).
pub fn check_cudnn_versions(version: usize, cudart: usize) -> Result<(), String> {
    let mut wrong = Vec::new();
    if version / 10000 != 9 {
        wrong.push(format!(
            "cuDNN {} is loaded; the engine needs cuDNN 9",
            version_text(version)
        ));
    }
    if cudart / 1000 != 13 {
        wrong.push(format!(
            "this cuDNN was built for CUDA {}.{}; the engine uses CUDA 13 (install a cuDNN 9 build for CUDA 13, e.g. the nvidia-cudnn-cu13 wheel)",
            cudart / 1000,
            cudart % 1000 / 10
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// cuDNN's version number as major.minor.patch (cuDNN 8 counted major·1000).
fn version_text(v: usize) -> String {
    if v < 10000 {
        format!("{}.{}.{}", v / 1000, v % 1000 / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 10000, v % 10000 / 100, v % 100)
    }
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
        // `libcuda` is not `libcudart`, nor `libcublas` `libcublasLt`.
        let after = file.strip_prefix(stem).and_then(|rest| rest.chars().next());
        if after.is_none_or(|c| c.is_ascii_alphanumeric()) || !file.contains(".so") {
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

/// NCCL's version code (`ncclGetVersion`) as (major, minor, patch): since
/// 2.9 it counts major·10000 + minor·100 + patch, before major·1000 + minor·100.
pub fn nccl_version(code: i32) -> (i32, i32, i32) {
    if code >= 10000 {
        (code / 10000, code % 10000 / 100, code % 100)
    } else {
        (code / 1000, code % 1000 / 100, code % 100)
    }
}

/// NCCL, which only data parallel on more than one GPU needs: where it was
/// loaded from and its version, or no path when it cannot be loaded. Kept
/// out of [`probe`]'s libraries: a machine without it still has a usable
/// GPU. Never panics.
pub fn nccl() -> Library {
    // SAFETY: a presence check only tries to load the library.
    let present = unsafe { cudarc::nccl::sys::is_culib_present() };
    let version = present.then(|| {
        let mut code = 0;
        // SAFETY: present, checked above; reads the version only.
        unsafe { cudarc::nccl::sys::ncclGetVersion(&mut code) };
        let (major, minor, patch) = nccl_version(code);
        format!("{major}.{minor}.{patch}")
    });
    Library {
        name: "nccl",
        // The version call above loaded the file for good: it is mapped now.
        path: present.then(|| loaded_path("libnccl").unwrap_or_else(|| "libnccl.so".into())),
        version,
    }
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
            let (v, rt) = unsafe {
                (
                    cudarc::cudnn::sys::cudnnGetVersion(),
                    cudarc::cudnn::sys::cudnnGetCudartVersion(),
                )
            };
            format!(
                "{} for CUDA {}.{}",
                version_text(v),
                rt / 1000,
                rt % 1000 / 10
            )
        }),
    });
    // A presence check alone unloads the library again; the version calls
    // above load it for good, so its file is in the memory map only now.
    for lib in &mut libraries {
        let stem = match lib.name {
            "driver" => "libcuda",
            name => &format!("lib{name}"),
        };
        if let (Some(path), Some(found)) = (&mut lib.path, loaded_path(stem)) {
            *path = found;
        }
    }
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

    /// A fresh temporary folder for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("m2t-probe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(dir: &Path, files: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), b"").unwrap();
        }
    }

    fn cudnn() -> &'static Group {
        GROUPS.iter().find(|g| g.name == "cudnn").unwrap()
    }

    #[test]
    fn the_chosen_cudnn_folder_is_complete_and_has_tensor_ir_if_any_does() {
        let root = scratch("choose");
        let (partial, no_ir, full) = (root.join("partial"), root.join("no-ir"), root.join("full"));
        touch(&partial, &["libcudnn.so.9", "libcudnn_graph.so.9"]);
        let mut required: Vec<&str> = cudnn().required.to_vec();
        required.push("libcudnn.so.9");
        touch(&no_ir, &required);
        touch(&full, &required);
        touch(&full, &["libcudnn_engines_tensor_ir.so.9"]);
        let dirs = [partial.clone(), no_ir.clone(), full.clone()];
        assert_eq!(choose_folder(&dirs, cudnn()), Some(full));
        // Without a folder that has the optional engines, the first complete one.
        assert_eq!(choose_folder(&dirs[..2], cudnn()), Some(no_ir));
        // Only an incomplete one: still chosen (and reported incomplete).
        assert_eq!(choose_folder(&dirs[..1], cudnn()), Some(partial.clone()));
        let (missing, optional) = cudnn().missing_in(&partial);
        assert!(
            missing.contains(&"libcudnn_ops.so.9") && !missing.contains(&"libcudnn_graph.so.9")
        );
        assert_eq!(optional, ["libcudnn_engines_tensor_ir.so.9"]);
        assert_eq!(choose_folder(std::slice::from_ref(&root), cudnn()), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn python_environments_are_found_without_being_activated() {
        let root = scratch("envs");
        let opt = root.join("opt");
        let home = root.join("home");
        for env in [
            opt.join("torch/.venv"),
            opt.join("tools/venv"),
            opt.join("conda/envs/py312"),
            home.join(".local"),
        ] {
            touch(
                &env.join("lib/python3.12/site-packages/nvidia/cudnn/lib"),
                &["libcudnn.so.9"],
            );
        }
        let roots = python_roots(&opt, Some(&home));
        let libs: Vec<PathBuf> = roots.iter().flat_map(|r| nvidia_lib_dirs(r)).collect();
        for env in [
            "opt/torch/.venv",
            "opt/tools/venv",
            "opt/conda/envs/py312",
            "home/.local",
        ] {
            let want = root
                .join(env)
                .join("lib/python3.12/site-packages/nvidia/cudnn/lib");
            assert!(libs.contains(&want), "{env} not searched: {libs:?}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unversioned_names_link_to_the_chosen_files() {
        let root = scratch("links");
        let chosen = root.join("wheel/lib");
        touch(&chosen, &["libcudnn.so.9", "libcublas.so.13"]);
        let pairs = [("cudnn", chosen.clone()), ("cublas", chosen.clone())];
        let links = link_unversioned(&pairs, &root.join("cache")).unwrap();
        assert_eq!(
            std::fs::read_link(links.join("libcudnn.so")).unwrap(),
            chosen.join("libcudnn.so.9")
        );
        assert_eq!(
            std::fs::read_link(links.join("libcublas.so")).unwrap(),
            chosen.join("libcublas.so.13")
        );
        // Made again, the same folder; other choices, another folder.
        assert_eq!(
            link_unversioned(&pairs, &root.join("cache")).unwrap(),
            links
        );
        let other = link_unversioned(&pairs[..1], &root.join("cache")).unwrap();
        assert_ne!(other, links);
        assert_eq!(unversioned("libnvrtc.so.13"), "libnvrtc.so");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nvrtc_builtins_of_any_minor_version_count() {
        let root = scratch("builtins");
        touch(&root, &["libnvrtc.so.13", "libnvrtc-builtins.so.13.2"]);
        let nvrtc = GROUPS.iter().find(|g| g.name == "nvrtc").unwrap();
        assert_eq!(nvrtc.missing_in(&root), (vec![], vec![]));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_library_path_puts_the_chosen_folders_first_once() {
        let folders = [PathBuf::from("/a/cudnn"), PathBuf::from("/b/nvrtc")];
        assert_eq!(
            library_path_with(&folders, Some("/usr/lib:/b/nvrtc:")),
            "/a/cudnn:/b/nvrtc:/usr/lib"
        );
        assert_eq!(library_path_with(&folders, None), "/a/cudnn:/b/nvrtc");
    }

    #[test]
    fn cudnn_versions_are_checked_and_a_mismatch_named() {
        assert!(check_cudnn_versions(91400, 13000).is_ok());
        let old = check_cudnn_versions(8907, 12020).unwrap_err();
        assert!(old.contains("cuDNN 8.9.7 is loaded"), "{old}");
        assert!(old.contains("built for CUDA 12.2"), "{old}");
        let cu12 = check_cudnn_versions(91000, 12080).unwrap_err();
        assert!(
            !cu12.contains("needs cuDNN 9") && cu12.contains("CUDA 12.8"),
            "{cu12}"
        );
    }

    #[test]
    fn nccl_versions_of_both_encodings_are_read() {
        assert_eq!(nccl_version(23007), (2, 30, 7));
        assert_eq!(nccl_version(21805), (2, 18, 5));
        assert_eq!(nccl_version(2804), (2, 8, 4));
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
