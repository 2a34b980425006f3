//! Vector instruction sets picked at run time: the CPU kernels are built for
//! baseline x86-64, and the hot ones also for AVX2 and AVX-512, so one binary
//! runs anywhere and uses what the CPU has.

/// The vector instruction sets the kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F/VL: 32 vector registers, 16-lane vectors.
    Avx512,
    /// AVX2 and FMA: 16 vector registers, 8-lane vectors.
    Avx2,
}

/// The best instruction set this CPU has, if any (checked once).
pub(crate) fn detected() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 =
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl");
            if avx2 && avx512 {
                Some(Isa::Avx512)
            } else {
                avx2.then_some(Isa::Avx2)
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Runs `f` compiled for the widest instruction set this CPU has: `f` is
/// inlined into a copy built with those features, so its loops vectorise
/// for them. `f` must be an `#[inline(always)]` closure (and what it calls
/// `#[inline(always)]` functions), or it stays a baseline function. The results are those of the baseline build: the compiler
/// neither reorders float sums nor fuses multiplies and adds on its own.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each arm runs only where the CPU has its features.
        match detected() {
            Some(Isa::Avx512) => unsafe { with_avx512(f) },
            Some(Isa::Avx2) => unsafe { with_avx2(f) },
            None => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
