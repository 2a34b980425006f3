//! NVTX ranges, so Nsight tools show layers and phases by name.
//!
//! CUDA 13 no longer ships `libnvToolsExt`; NVTX 3 is header-only and talks
//! to a tool through an injection protocol, which this module speaks: a tool
//! (`ncu`, `nsys`) names its library in `NVTX_INJECTION64_PATH` (or preloads
//! one exporting `InitializeInjectionNvtx2Preinject`); on the first range we
//! load it and call its `InitializeInjectionNvtx2` with our export-table
//! getter, and it writes its implementations into our function slots. With
//! no tool attached a range costs one atomic load, and nothing here panics.

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::profile::{self, Kind};
use kernels::Stamp;

/// Callback ids of the CORE module (NVTX's `NvtxCallbackIdCore`); slot 0 is
/// invalid and 16 is the module's size.
const CORE_SIZE: usize = 16;
const RANGE_PUSH_A: usize = 9;
const RANGE_POP: usize = 11;
const MODULE_CORE: c_int = 1;
const EXPORT_CALLBACKS: u32 = 1;
const EXPORT_VERSION_INFO: u32 = 3;
const NVTX_VERSION: u32 = 3;

/// The tool's implementations, by callback id (null until it attaches).
static CORE: [AtomicPtr<c_void>; CORE_SIZE] = [const { AtomicPtr::new(null_mut()) }; CORE_SIZE];

/// Pointers to the slots, as `GetModuleFunctionTable` hands them out: null
/// at 0 (invalid id) and after the last, so a tool reading past the end
/// crashes instead of corrupting memory.
struct SlotTable([*mut *mut c_void; CORE_SIZE + 1]);
// SAFETY: the table only holds addresses of the static slots.
unsafe impl Sync for SlotTable {}
unsafe impl Send for SlotTable {}

fn slot_table() -> &'static SlotTable {
    static TABLE: OnceLock<SlotTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [null_mut(); CORE_SIZE + 1];
        for (id, entry) in t.iter_mut().enumerate().take(CORE_SIZE).skip(1) {
            *entry = CORE[id].as_ptr();
        }
        SlotTable(t)
    })
}

/// NVTX's `NvtxExportTableCallbacks`.
#[repr(C)]
struct Callbacks {
    struct_size: usize,
    get_module_function_table:
        unsafe extern "C" fn(c_int, *mut *mut *mut *mut c_void, *mut u32) -> c_int,
}

/// NVTX's `NvtxExportTableVersionInfo`.
#[repr(C)]
struct VersionInfo {
    struct_size: usize,
    version: u32,
    reserved0: u32,
    set_injection_nvtx_version: extern "C" fn(u32),
}

static CALLBACKS: Callbacks = Callbacks {
    struct_size: size_of::<Callbacks>(),
    get_module_function_table,
};
static VERSION_INFO: VersionInfo = VersionInfo {
    struct_size: size_of::<VersionInfo>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version,
};

/// Hands a tool the CORE module's slots; other modules are not offered.
unsafe extern "C" fn get_module_function_table(
    module: c_int,
    out_table: *mut *mut *mut *mut c_void,
    out_size: *mut u32,
) -> c_int {
    if module != MODULE_CORE {
        return 0;
    }
    // SAFETY: the tool passes writable out-pointers or null.
    unsafe {
        if !out_size.is_null() {
            *out_size = CORE_SIZE as u32;
        }
        if !out_table.is_null() {
            *out_table = slot_table().0.as_ptr().cast_mut();
        }
    }
    1
}

extern "C" fn set_injection_nvtx_version(_version: u32) {}

extern "C" fn get_export_table(id: u32) -> *const c_void {
    match id {
        EXPORT_CALLBACKS => (&CALLBACKS as *const Callbacks).cast(),
        EXPORT_VERSION_INFO => (&VERSION_INFO as *const VersionInfo).cast(),
        _ => std::ptr::null(),
    }
}

type InitializeInjection = unsafe extern "C" fn(extern "C" fn(u32) -> *const c_void) -> c_int;

/// Loads the tool's injection library once; true if a tool attached.
fn attached() -> bool {
    static ATTACHED: OnceLock<bool> = OnceLock::new();
    *ATTACHED.get_or_init(|| {
        // SAFETY: loading the library a profiler named, and calling its
        // documented entry point with a valid export-table getter.
        let ok = unsafe {
            let init = match std::env::var_os("NVTX_INJECTION64_PATH") {
                Some(path) => libloading::Library::new(path).ok().and_then(|lib| {
                    let f = lib
                        .get::<InitializeInjection>(b"InitializeInjectionNvtx2\0")
                        .ok()
                        .map(|s| *s);
                    std::mem::forget(lib); // the tool stays loaded
                    f
                }),
                None => libloading::os::unix::Library::this()
                    .get::<InitializeInjection>(b"InitializeInjectionNvtx2Preinject\0")
                    .ok()
                    .map(|s| *s),
            };
            init.is_some_and(|f| f(get_export_table) != 0)
        };
        if !ok {
            // A failed initialisation may have filled some slots.
            CORE.iter()
                .for_each(|s| s.store(null_mut(), Ordering::Release));
        }
        ok
    })
}

/// An open range; it closes when dropped. Ranges also feed
/// [`crate::profile`] while it is on.
#[must_use = "the range closes when this is dropped"]
pub struct Range {
    pushed: bool,
    timed: Option<(String, Kind, Stamp)>,
}

/// Opens a range for a layer, head or op named `name` (a no-op without a
/// tool or the profiler).
pub fn range(name: &str) -> Range {
    open(Kind::Layer, || name.to_string())
}

/// Opens a range for a phase of the training step.
pub fn phase(name: &str) -> Range {
    open(Kind::Phase, || name.to_string())
}

/// Opens a range of `kind` whose name is built only when a tool or the
/// profiler will see it.
pub fn open(kind: Kind, name: impl FnOnce() -> String) -> Range {
    let push = if attached() {
        CORE[RANGE_PUSH_A].load(Ordering::Acquire)
    } else {
        null_mut()
    };
    let start = profile::stamp();
    if push.is_null() && start.is_none() {
        return Range {
            pushed: false,
            timed: None,
        };
    }
    let name = name();
    if !push.is_null() {
        let c = CString::new(name.replace('\0', " ")).expect("NULs replaced");
        // SAFETY: the tool stored an `int (*)(const char*)` in this slot.
        unsafe {
            let push: unsafe extern "C" fn(*const c_char) -> c_int = std::mem::transmute(push);
            push(c.as_ptr());
        }
    }
    Range {
        pushed: !push.is_null(),
        timed: start.map(|s| (name, kind, s)),
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        if let Some((name, kind, start)) = self.timed.take() {
            profile::record(name, kind, start);
        }
        if !self.pushed {
            return;
        }
        let pop = CORE[RANGE_POP].load(Ordering::Acquire);
        if !pop.is_null() {
            // SAFETY: the tool stored an `int (*)(void)` in this slot.
            unsafe {
                let pop: unsafe extern "C" fn() -> c_int = std::mem::transmute(pop);
                pop();
            }
        }
    }
}
