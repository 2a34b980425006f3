//! Casts between f32 and bf16/f16: bit-identical to the CPU's rounding,
//! including ties, subnormals, overflow, infinities, signed zeros and NaN.

use super::*;

pub const CASES: &[Case] = &[("round_trip", round_trip)];

/// Values that exercise every rounding path of both 16-bit formats.
fn awkward_values() -> Tensor {
    let mut v = vec![
        0.0f32,
        -0.0,
        1.0,
        -1.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40, // f32 subnormal
        65504.0,
        65519.99,           // just below the f16 overflow threshold
        65520.0,            // ties to even: overflows to f16 infinity
        6.0e-8,             // around the smallest f16 subnormal
        2.98e-8,            // just under half of it
        1.0 + 1.0 / 256.0,  // a bf16 tie: stays at 1
        1.0 + 3.0 / 256.0,  // a bf16 tie: rounds up to even
        1.0 + 1.0 / 2048.0, // an f16 tie
        3.0e-5,             // f16 subnormal range
    ];
    let mut bits = 0x3F80_0001u32;
    while v.len() < 1000 {
        // Walk the mantissa and exponent space.
        v.push(f32::from_bits(bits));
        v.push(-f32::from_bits(bits ^ 0x0000_8000));
        bits = bits.wrapping_mul(2_654_435_761).wrapping_add(12_345) & 0x7FFF_FFFF;
    }
    let n = v.len();
    Tensor::from_vec(v, [n]).unwrap()
}

fn round_trip(device: Device) {
    let x = awkward_values();
    let xd = to(device, &x);
    for dtype in [DType::BF16, DType::F16] {
        let want = x.to_dtype(dtype).unwrap();
        let got = xd.to_dtype(dtype).unwrap();
        assert_eq!(got.device(), device);
        assert_bits_equal(&format!("f32 → {dtype}"), &got, &want);
        let back = got.to_dtype(DType::F32).unwrap();
        assert_bits_equal(
            &format!("{dtype} → f32"),
            &back,
            &want.to_dtype(DType::F32).unwrap(),
        );
    }
    expect_launched(
        device,
        &[
            "cast_f32_to_bf16",
            "cast_f32_to_f16",
            "cast_bf16_to_f32",
            "cast_f16_to_f32",
        ],
    );
}
