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
/// exact integer dot product with one token's 16-bit activations. The f32
/// arithmetic around them is the same code everywhere (`matrix.rs`), so the
/// browser answers exactly as the native CLI.
pub trait Blocks {
    type Unpacked: Copy;
    /// q4: byte j holds value j (low nibble) and value j + 16 (high), minus 8.
    fn unpack_q4(nibbles: &[u8; 16]) -> Self::Unpacked;
    fn unpack_q8(bytes: &[u8; 32]) -> Self::Unpacked;
    /// Σ w_j q_j, exact.
    fn dot(w: &Self::Unpacked, q: &[i16; 32]) -> i32;
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

    #[inline(always)]
    fn dot(w: &[i16; 32], q: &[i16; 32]) -> i32 {
        w.iter().zip(q).map(|(&w, &q)| w as i32 * q as i32).sum()
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

    #[inline(always)]
    fn dot(w: &Self::Unpacked, q: &[i16; 32]) -> i32 {
        use core::arch::wasm32::*;
        // SAFETY: q holds 64 readable bytes; v128_load takes unaligned addresses.
        let q = |i: usize| unsafe { v128_load(q.as_ptr().add(8 * i) as *const v128) };
        let a = i32x4_add(i32x4_dot_i16x8(w[0], q(0)), i32x4_dot_i16x8(w[1], q(1)));
        let b = i32x4_add(i32x4_dot_i16x8(w[2], q(2)), i32x4_dot_i16x8(w[3], q(3)));
        let s = i32x4_add(a, b);
        (i32x4_extract_lane::<0>(s) + i32x4_extract_lane::<1>(s))
            + (i32x4_extract_lane::<2>(s) + i32x4_extract_lane::<3>(s))
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

    #[inline(always)]
    fn dot(w: &Self::Unpacked, q: &[i16; 32]) -> i32 {
        use std::arch::x86_64::*;
        // SAFETY: 64 readable bytes; AVX2 is present (the callers' contract).
        unsafe {
            let q0 = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
            let q1 = _mm256_loadu_si256(q.as_ptr().add(16) as *const __m256i);
            let s = _mm256_add_epi32(_mm256_madd_epi16(w.0, q0), _mm256_madd_epi16(w.1, q1));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable loops give the exact products, and AVX2 (where the CPU
    /// has it) the portable integers.
    #[test]
    fn block_implementations_agree() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..1000 {
            let nibbles: [u8; 16] = std::array::from_fn(|_| next() as u8);
            let bytes: [u8; 32] = std::array::from_fn(|_| next() as u8);
            let q: [i16; 32] = std::array::from_fn(|_| next() as i16);
            let q4 = Portable::dot(&Portable::unpack_q4(&nibbles), &q);
            let q8 = Portable::dot(&Portable::unpack_q8(&bytes), &q);
            let expected4: i32 = (0..16)
                .map(|j| {
                    ((nibbles[j] & 15) as i32 - 8) * q[j] as i32 + ((nibbles[j] >> 4) as i32 - 8) * q[j + 16] as i32
                })
                .sum();
            let expected8: i32 = (0..32).map(|j| bytes[j] as i8 as i32 * q[j] as i32).sum();
            assert_eq!((q4, q8), (expected4, expected8));
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                assert_eq!(Avx2::dot(&Avx2::unpack_q4(&nibbles), &q), q4);
                assert_eq!(Avx2::dot(&Avx2::unpack_q8(&bytes), &q), q8);
            }
        }
    }
}
