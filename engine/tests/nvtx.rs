//! The NVTX injection protocol against a stand-in tool: a small shared
//! library, built here with the C compiler the kernels crate needs anyway,
//! that attaches the way Nsight's does and counts the ranges it receives.

use std::process::Command;

const FAKE_TOOL: &str = r#"
#include <stdint.h>
#include <stddef.h>
#include <string.h>
typedef void (*fn_t)(void);
typedef const void* (*get_export_table_t)(uint32_t);
typedef struct { size_t struct_size; int (*get_module)(int, fn_t***, unsigned*); } callbacks_t;
typedef struct { size_t struct_size; uint32_t version; uint32_t reserved0; void (*set_version)(uint32_t); } version_t;
static int depth, pushes, pops, deepest, version;
static char last[64];
static int push_a(const char* m) { pushes++; if (++depth > deepest) deepest = depth; strncpy(last, m, 63); return depth; }
static int pop(void) { pops++; return --depth; }
int InitializeInjectionNvtx2(get_export_table_t get) {
    const callbacks_t* cb = get(1);
    const version_t* v = get(3);
    fn_t** table; unsigned size;
    if (!cb || !v || cb->struct_size < sizeof(callbacks_t) || !cb->get_module(1, &table, &size) || size != 16) return 0;
    if (table[0] != NULL || table[16] != NULL || cb->get_module(2, &table, &size)) return 0;
    version = v->version;
    *table[9] = (fn_t)push_a;
    *table[11] = (fn_t)pop;
    return 1;
}
int fake_counts(int what) { return what == 0 ? pushes : what == 1 ? pops : what == 2 ? deepest : version; }
const char* fake_last(void) { return last; }
"#;

#[test]
fn ranges_reach_an_attached_tool() {
    let dir = std::env::temp_dir().join(format!("m2t-nvtx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, lib) = (dir.join("tool.c"), dir.join("libtool.so"));
    std::fs::write(&src, FAKE_TOOL).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("a C compiler (cc), which building the kernels crate needs too");
    assert!(status.success());
    // SAFETY: set before the first range, in a test binary with one test.
    unsafe { std::env::set_var("NVTX_INJECTION64_PATH", &lib) };

    {
        let _step = engine::nvtx::range("step");
        let _layer =
            engine::nvtx::open(engine::profile::Kind::Layer, || "layer1.0 conv".to_string());
        let _odd = engine::nvtx::range("a\0name");
    }

    // SAFETY: the library is the one NVTX loaded (same path); its counters
    // are plain C functions.
    unsafe {
        let tool = libloading::Library::new(&lib).unwrap();
        let counts = tool
            .get::<unsafe extern "C" fn(i32) -> i32>(b"fake_counts\0")
            .unwrap();
        let last = tool
            .get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"fake_last\0")
            .unwrap();
        assert_eq!(
            (counts(0), counts(1), counts(2)),
            (3, 3, 3),
            "pushes, pops, deepest"
        );
        assert_eq!(counts(3), 3, "NVTX version offered to the tool");
        assert_eq!(std::ffi::CStr::from_ptr(last()).to_str().unwrap(), "a name");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
