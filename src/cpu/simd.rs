//! The inner loops of the CPU matrix products over one 32-value block: the
//! integer dot products of 4- and 8-bit weights with 16-bit activations, and
//! the f32 dot product. wasm builds with simd128 use its instructions
//! explicitly (`i32x4_dot_i16x8`); elsewhere the portable loops are written
//! so that LLVM vectorises them (AVX2 through `matrix.rs`'s runtime
//! dispatch, NEON on aarch64).
//!
//! Why 16-bit activations and not llama.cpp's 8: with 8, SmolLM2's
//! teacher-forced top-1 agreement with transformers fell to 97.9 % (the
//! GPU path, f32 activations: 100 %); 16 bits are exact to 1/65534 of a
//! block's largest value and cost the same instructions, since i8 x i8
//! products are widened to i16 lanes before the pairwise i32 dot anyway.
//! relaxed-SIMD's i8 dot would be the step past this (it needs 8-bit
//! activations: measure the accuracy first).

/// The instruction set these loops were compiled for, for `stats()`.
pub fn name() -> &'static str {
    if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
        "wasm simd128"
    } else if cfg!(target_arch = "wasm32") {
        "wasm scalar"
    } else if cfg!(target_arch = "aarch64") {
        "neon"
    } else {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
        "portable"
    }
}

/// Σ (nibble_j - 8) · q_j over one block: byte j of `nibbles` holds value j
/// (low nibble) and value j + 16 (high nibble), as in GGUF's q4_0 and q4_1.
#[inline(always)]
pub fn dot_q4(nibbles: &[u8; 16], q: &[i16; 32]) -> i32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        wasm::dot_q4(nibbles, q)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let mut sum = 0i32;
        for j in 0..16 {
            let lo = (nibbles[j] & 15) as i32 - 8;
            let hi = (nibbles[j] >> 4) as i32 - 8;
            sum += lo * q[j] as i32 + hi * q[j + 16] as i32;
        }
        sum
    }
}

/// Σ w_j · q_j over one block of signed bytes (q8_0).
#[inline(always)]
pub fn dot_q8(w: &[i8; 32], q: &[i16; 32]) -> i32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        wasm::dot_q8(w, q)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let mut sum = 0i32;
        for j in 0..32 {
            sum += w[j] as i32 * q[j] as i32;
        }
        sum
    }
}

/// Σ a_j · b_j in f32, eight partial sums (vectorisable without fast-math).
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (a, b) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for j in 0..8 {
            acc[j] += a[j] * b[j];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for j in chunks * 8..n {
        sum += a[j] * b[j];
    }
    sum
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use core::arch::wasm32::*;

    /// 16 bytes from `bytes` (at least 16 long; v128_load takes unaligned addresses).
    #[inline(always)]
    fn load(bytes: &[u8]) -> v128 {
        debug_assert!(bytes.len() >= 16);
        // SAFETY: 16 readable bytes, checked by the callers' array types.
        unsafe { v128_load(bytes.as_ptr() as *const v128) }
    }

    /// Activations 8j .. 8j + 7 of a block as i16x8.
    #[inline(always)]
    fn q8x(q: &[i16; 32], j: usize) -> v128 {
        load(bytemuck::cast_slice::<i16, u8>(&q[8 * j..8 * j + 8]))
    }

    #[inline(always)]
    fn horizontal(v: v128) -> i32 {
        i32x4_extract_lane::<0>(v)
            + i32x4_extract_lane::<1>(v)
            + i32x4_extract_lane::<2>(v)
            + i32x4_extract_lane::<3>(v)
    }

    /// Σ w q of 16 signed-byte weights (i8x16) and activations 16h .. 16h + 15.
    #[inline(always)]
    fn dot16(w: v128, q: &[i16; 32], h: usize) -> v128 {
        let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(w), q8x(q, 2 * h));
        let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(w), q8x(q, 2 * h + 1));
        i32x4_add(lo, hi)
    }

    #[inline(always)]
    pub fn dot_q4(nibbles: &[u8; 16], q: &[i16; 32]) -> i32 {
        let packed = load(nibbles);
        let low = i8x16_sub(v128_and(packed, u8x16_splat(15)), i8x16_splat(8));
        let high = i8x16_sub(u8x16_shr(packed, 4), i8x16_splat(8));
        horizontal(i32x4_add(dot16(low, q, 0), dot16(high, q, 1)))
    }

    #[inline(always)]
    pub fn dot_q8(w: &[i8; 32], q: &[i16; 32]) -> i32 {
        let w = bytemuck::cast_slice::<i8, u8>(w);
        horizontal(i32x4_add(dot16(load(&w[..16]), q, 0), dot16(load(&w[16..]), q, 1)))
    }
}
