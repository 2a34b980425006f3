//! NVRTC compilation of kernel families to CUBIN, with an on-disk cache.
//!
//! A CUBIN for the exact arch (`sm_90` on an H100) loads without the driver's
//! PTX JIT. The cache key hashes the source, the options, the NVRTC version
//! and the arch, so a changed kernel or toolkit never loads a stale binary.

use crate::registry::{COMMON, Family};
use crate::{Error, Result, probe};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The NVRTC options for `arch` (e.g. `sm_90`).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-lineinfo".into(),
    ]
}

/// The program NVRTC compiles for `family`: the prelude, then the family.
fn program_source(family: &Family) -> String {
    format!(
        "{COMMON}\n#line 1 \"{}.cu\"\n{}",
        family.name, family.source
    )
}

/// NVRTC's version, or an error saying it is missing.
pub fn version() -> Result<(i32, i32)> {
    if !probe::nvrtc_present() {
        return Err(Error::Unavailable(
            "NVRTC (libnvrtc.so.13) not found; scripts/test.sh installs it into .deps, or set M2T_CUDA_LIBS".into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call writes two ints.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    Ok((major, minor))
}

/// Where compiled kernels are cached: `$M2T_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/m2t/kernels`, else `~/.cache/m2t/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("M2T_KERNEL_CACHE") {
        return Some(d.into());
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache")))
        .ok()?;
    Some(base.join("m2t/kernels"))
}

/// 128-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
pub fn cache_key(parts: &[&[u8]]) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for part in parts {
        for &b in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            h ^= b as u128;
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    format!("{h:032x}")
}

/// A compiled family.
pub struct Compiled {
    /// The CUBIN image.
    pub cubin: Vec<u8>,
    /// Whether it came from the disk cache.
    pub cached: bool,
}

/// The CUBIN of `family` for `arch`, from the cache or freshly compiled (and
/// then cached; a cache that cannot be written is skipped silently, since it
/// only saves time).
pub fn compile(family: &Family, arch: &str) -> Result<Compiled> {
    let (major, minor) = version()?;
    let source = program_source(family);
    let opts = options(arch);
    let key = cache_key(&[
        source.as_bytes(),
        opts.join(" ").as_bytes(),
        format!("{major}.{minor}").as_bytes(),
        arch.as_bytes(),
    ]);
    let file = cache_dir().map(|d| d.join(format!("{}-{arch}-{key}.cubin", family.name)));
    if let Some(cubin) = file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        return Ok(Compiled {
            cubin,
            cached: true,
        });
    }
    let cubin = compile_uncached(family, &source, &opts, arch)?;
    if let Some(file) = file {
        let _ = write_atomic(&file, &cubin);
    }
    Ok(Compiled {
        cubin,
        cached: false,
    })
}

fn write_atomic(file: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(file.parent().unwrap())?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, file)
}

fn compile_uncached(family: &Family, source: &str, opts: &[String], arch: &str) -> Result<Vec<u8>> {
    let err = |log: String| Error::Compile {
        family: family.name.into(),
        arch: arch.into(),
        log,
    };
    let src = CString::new(source).map_err(|_| err("source contains a NUL byte".into()))?;
    let name = CString::new(format!("{}.cu", family.name)).unwrap();
    let prog = result::create_program(&src, Some(&name)).map_err(|e| err(e.to_string()))?;
    // SAFETY: `prog` is a live program; it is destroyed once below.
    unsafe {
        let compiled = result::compile_program(prog, opts);
        let out = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| c_chars_to_string(&l))
                    .unwrap_or_default();
                Err(err(format!("{e}\n{log}")))
            }
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| err(e.to_string()))?;
                let mut cubin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                    .result()
                    .map_err(|e| err(e.to_string()))?;
                Ok(cubin)
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_every_part() {
        let base = cache_key(&[b"src", b"-lineinfo", b"13.0", b"sm_90"]);
        assert_eq!(base.len(), 32);
        assert_eq!(base, cache_key(&[b"src", b"-lineinfo", b"13.0", b"sm_90"]));
        for other in [
            cache_key(&[b"src ", b"-lineinfo", b"13.0", b"sm_90"]),
            cache_key(&[b"src", b"", b"13.0", b"sm_90"]),
            cache_key(&[b"src", b"-lineinfo", b"13.1", b"sm_90"]),
            cache_key(&[b"src", b"-lineinfo", b"13.0", b"sm_80"]),
            // Part boundaries matter: "ab"+"c" is not "a"+"bc".
            cache_key(&[b"sr", b"c-lineinfo", b"13.0", b"sm_90"]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn options_name_the_exact_arch_and_keep_line_info() {
        let o = options("sm_90");
        assert!(o.contains(&"--gpu-architecture=sm_90".to_string()));
        assert!(o.contains(&"-lineinfo".to_string()));
    }
}
