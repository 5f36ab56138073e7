//! The inner loops of the CPU matrix products, per 32-value block
//! ([`Blocks`]): a weight block unpacked once to 16-bit lanes and its exact
//! integer dot product with each token's 16-bit activations. wasm builds use
//! simd128 explicitly (`i32x4_dot_i16x8`), x86 AVX2 (`vpmaddwd`, chosen at
//! run time by `matrix.rs`); elsewhere plain loops for LLVM to vectorise
//! (NEON on aarch64).
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

/// An f16's value, without branches: exact for zeros, subnormals and normal
/// numbers (a block scale is never infinite or NaN: the quantizer makes them).
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let magnitude = f32::from_bits(((bits & 0x7fff) as u32) << 13) * f32::from_bits(0x7780_0000); // × 2^112
    f32::from_bits(magnitude.to_bits() | (((bits & 0x8000) as u32) << 16))
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

/// The per-block operations of the quantized products, one implementation
/// per instruction set: a weight block unpacked once to 16-bit lanes, and its
/// dot product with one token's 16-bit activations accumulated into four f32
/// lanes. Every implementation does the same f32 operations in the same
/// order, so the browser answers exactly as the native CLI:
///
/// - lane l's integer is Σ w_j q_j over the j with j mod 8 ∈ {2l, 2l + 1}
///   (exact: the partition is what `vpmaddwd` and `i32x4_dot_i16x8` leave
///   after adding their halves, so no horizontal sum per block);
/// - acc_l = acc_l + f32(integer_l) × scale (a multiply, then an add: no FMA);
/// - the total is (acc_0 + acc_1) + (acc_2 + acc_3).
pub trait Blocks {
    type Unpacked: Copy;
    type Acc: Copy;
    /// q4: byte j holds value j (low nibble) and value j + 16 (high), minus 8.
    fn unpack_q4(nibbles: &[u8; 16]) -> Self::Unpacked;
    fn unpack_q8(bytes: &[u8; 32]) -> Self::Unpacked;
    fn zero() -> Self::Acc;
    /// acc + (the four lanes of w · q) × scale.
    fn dot_scaled(acc: Self::Acc, w: &Self::Unpacked, q: &[i16; 32], scale: f32) -> Self::Acc;
    fn total(acc: Self::Acc) -> f32;
}

/// The four lane integers of w · q (see [`Blocks`]).
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
#[inline(always)]
fn lanes(w: &[i16; 32], q: &[i16; 32]) -> [i32; 4] {
    let mut lanes = [0i32; 4];
    for j in 0..32 {
        lanes[(j % 8) / 2] += w[j] as i32 * q[j] as i32;
    }
    lanes
}

#[inline(always)]
fn total_of(acc: [f32; 4]) -> f32 {
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Plain loops (LLVM vectorises what it can), or simd128 in wasm builds that have it.
pub struct Portable;

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
impl Blocks for Portable {
    type Unpacked = [i16; 32];

    #[inline(always)]
    fn unpack_q4(nibbles: &[u8; 16]) -> [i16; 32] {
        let mut w = [0i16; 32];
        for j in 0..16 {
            w[j] = (nibbles[j] & 15) as i16 - 8;
            w[j + 16] = (nibbles[j] >> 4) as i16 - 8;
        }
        w
    }

    #[inline(always)]
    fn unpack_q8(bytes: &[u8; 32]) -> [i16; 32] {
        bytes.map(|b| b as i8 as i16)
    }

    type Acc = [f32; 4];

    #[inline(always)]
    fn zero() -> [f32; 4] {
        [0.0; 4]
    }

    #[inline(always)]
    fn dot_scaled(acc: [f32; 4], w: &[i16; 32], q: &[i16; 32], scale: f32) -> [f32; 4] {
        let lanes = lanes(w, q);
        std::array::from_fn(|l| acc[l] + lanes[l] as f32 * scale)
    }

    #[inline(always)]
    fn total(acc: [f32; 4]) -> f32 {
        total_of(acc)
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Blocks for Portable {
    /// Values 0-7, 8-15, 16-23, 24-31 as i16x8.
    type Unpacked = [core::arch::wasm32::v128; 4];

    #[inline(always)]
    fn unpack_q4(nibbles: &[u8; 16]) -> Self::Unpacked {
        use core::arch::wasm32::*;
        let packed = wasm::load(nibbles);
        let low = i8x16_sub(v128_and(packed, u8x16_splat(15)), i8x16_splat(8));
        let high = i8x16_sub(u8x16_shr(packed, 4), i8x16_splat(8));
        wasm::widen(low, high)
    }

    #[inline(always)]
    fn unpack_q8(bytes: &[u8; 32]) -> Self::Unpacked {
        let (low, high) = bytes.split_at(16);
        let half = |h: &[u8]| wasm::load(h.try_into().unwrap_or(&[0; 16]));
        wasm::widen(half(low), half(high))
    }

    /// f32x4.
    type Acc = core::arch::wasm32::v128;

    #[inline(always)]
    fn zero() -> Self::Acc {
        core::arch::wasm32::f32x4_splat(0.0)
    }

    #[inline(always)]
    fn dot_scaled(acc: Self::Acc, w: &Self::Unpacked, q: &[i16; 32], scale: f32) -> Self::Acc {
        use core::arch::wasm32::*;
        // SAFETY: q holds 64 readable bytes; v128_load takes unaligned addresses.
        let q = |i: usize| unsafe { v128_load(q.as_ptr().add(8 * i) as *const v128) };
        let a = i32x4_add(i32x4_dot_i16x8(w[0], q(0)), i32x4_dot_i16x8(w[1], q(1)));
        let b = i32x4_add(i32x4_dot_i16x8(w[2], q(2)), i32x4_dot_i16x8(w[3], q(3)));
        f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(i32x4_add(a, b)), f32x4_splat(scale)))
    }

    #[inline(always)]
    fn total(acc: Self::Acc) -> f32 {
        use core::arch::wasm32::*;
        total_of([
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ])
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use core::arch::wasm32::*;

    /// 16 bytes (v128_load takes unaligned addresses).
    #[inline(always)]
    pub fn load(bytes: &[u8; 16]) -> v128 {
        // SAFETY: the array holds 16 readable bytes.
        unsafe { v128_load(bytes.as_ptr() as *const v128) }
    }

    /// Two i8x16 (values 0-15 and 16-31) as four i16x8.
    #[inline(always)]
    pub fn widen(low: v128, high: v128) -> [v128; 4] {
        [
            i16x8_extend_low_i8x16(low),
            i16x8_extend_high_i8x16(low),
            i16x8_extend_low_i8x16(high),
            i16x8_extend_high_i8x16(high),
        ]
    }
}

/// AVX2: `vpmovsxbw` to unpack, `vpmaddwd` to multiply and add pairs. Only
/// called from functions compiled with AVX2 enabled, after the CPU was
/// checked for it (`matrix.rs`).
#[cfg(target_arch = "x86_64")]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Blocks for Avx2 {
    /// Values 0-15 and 16-31 as i16x16.
    type Unpacked = (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i);

    #[inline(always)]
    fn unpack_q4(nibbles: &[u8; 16]) -> Self::Unpacked {
        use std::arch::x86_64::*;
        // SAFETY: 16 readable bytes; AVX2 is present (the callers' contract).
        unsafe {
            let packed = _mm_loadu_si128(nibbles.as_ptr() as *const __m128i);
            let (mask, eight) = (_mm_set1_epi8(15), _mm_set1_epi8(8));
            let low = _mm_sub_epi8(_mm_and_si128(packed, mask), eight);
            let high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), eight);
            (_mm256_cvtepi8_epi16(low), _mm256_cvtepi8_epi16(high))
        }
    }

    #[inline(always)]
    fn unpack_q8(bytes: &[u8; 32]) -> Self::Unpacked {
        use std::arch::x86_64::*;
        // SAFETY: 32 readable bytes; AVX2 is present (the callers' contract).
        unsafe {
            let low = _mm_loadu_si128(bytes.as_ptr() as *const __m128i);
            let high = _mm_loadu_si128(bytes.as_ptr().add(16) as *const __m128i);
            (_mm256_cvtepi8_epi16(low), _mm256_cvtepi8_epi16(high))
        }
    }

    /// f32x4.
    type Acc = std::arch::x86_64::__m128;

    #[inline(always)]
    fn zero() -> Self::Acc {
        // SAFETY: SSE is part of x86_64.
        unsafe { std::arch::x86_64::_mm_setzero_ps() }
    }

    #[inline(always)]
    fn dot_scaled(acc: Self::Acc, w: &Self::Unpacked, q: &[i16; 32], scale: f32) -> Self::Acc {
        use std::arch::x86_64::*;
        // SAFETY: 64 readable bytes; AVX2 is present (the callers' contract).
        unsafe {
            let q0 = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
            let q1 = _mm256_loadu_si256(q.as_ptr().add(16) as *const __m256i);
            // Lane k of the sum pairs values 2k, 2k + 1 (and 16 more); folding
            // the halves leaves lane l with every j mod 8 ∈ {2l, 2l + 1}.
            let s = _mm256_add_epi32(_mm256_madd_epi16(w.0, q0), _mm256_madd_epi16(w.1, q1));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(s), _mm_set1_ps(scale)))
        }
    }

    #[inline(always)]
    fn total(acc: Self::Acc) -> f32 {
        let mut lanes = [0f32; 4];
        // SAFETY: 16 writable bytes.
        unsafe { std::arch::x86_64::_mm_storeu_ps(lanes.as_mut_ptr(), acc) };
        total_of(lanes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lanes hold the exact products, and AVX2 (where the CPU has it)
    /// accumulates bit for bit as the portable loops.
    #[test]
    fn block_implementations_agree() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let mut portable = Portable::zero();
            #[cfg(target_arch = "x86_64")]
            let mut avx2 = Avx2::zero();
            for _ in 0..8 {
                let nibbles: [u8; 16] = std::array::from_fn(|_| next() as u8);
                let bytes: [u8; 32] = std::array::from_fn(|_| next() as u8);
                let q: [i16; 32] = std::array::from_fn(|_| next() as i16);
                let scale = (next() % 2000) as f32 / 997.0 - 1.0;
                let w4: [i16; 32] = std::array::from_fn(|j| {
                    let byte = nibbles[j % 16];
                    (if j < 16 { byte & 15 } else { byte >> 4 }) as i16 - 8
                });
                let w8: [i16; 32] = std::array::from_fn(|j| bytes[j] as i8 as i16);
                let exact = |w: &[i16; 32]| (0..32).map(|j| w[j] as i64 * q[j] as i64).sum::<i64>();
                assert_eq!(lanes(&w4, &q).iter().map(|&l| l as i64).sum::<i64>(), exact(&w4));
                assert_eq!(lanes(&w8, &q).iter().map(|&l| l as i64).sum::<i64>(), exact(&w8));
                portable = Portable::dot_scaled(portable, &Portable::unpack_q4(&nibbles), &q, scale);
                portable = Portable::dot_scaled(portable, &Portable::unpack_q8(&bytes), &q, scale);
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    avx2 = Avx2::dot_scaled(avx2, &Avx2::unpack_q4(&nibbles), &q, scale);
                    avx2 = Avx2::dot_scaled(avx2, &Avx2::unpack_q8(&bytes), &q, scale);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                assert_eq!(Avx2::total(avx2).to_bits(), Portable::total(portable).to_bits());
            }
        }
    }
}
