//! Images for Phi-3(.5)-vision: decoding, and the processor's "HD" transform
//! (`image_processing_phi3_v.py`) reproduced exactly, so that a crop's pixels
//! are the ones the model was trained on:
//!
//! 1. RGB, with transparency composited on white (transformers' `convert_to_rgb`);
//! 2. a landscape view (portrait images are transposed, and back at the end);
//! 3. `scale` = the largest integer with `scale * ceil(scale / ratio) <= num_crops`;
//!    resize to width 336·scale with Pillow's BILINEAR filter (its fixed-point
//!    arithmetic, antialiased when shrinking);
//! 4. pad the height to a multiple of 336, centred, with white;
//! 5. normalise with CLIP's mean and std; the global view is a bicubic
//!    (torch `interpolate`, A = -0.75) resize of the normalised image to 336×336;
//! 6. crops of 336×336, row-major, after the global view.

use crate::error::{Error, Result};

/// The side of a crop, in pixels.
pub const CROP: usize = 336;
/// OpenAI CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / _STD, as written there).
#[allow(clippy::excessive_precision)]
const MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
const STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];
/// Largest side accepted, in pixels (beyond it the resize costs more memory than any crop grid needs).
pub const MAX_SIDE: usize = 16384;

/// An 8-bit RGB image: [height, width, 3], row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb {
    /// From RGBA pixels (a canvas' ImageData, a decoded PNG): transparency is
    /// composited on white as Pillow's `alpha_composite` does it, in integers.
    pub fn from_rgba(width: usize, height: usize, rgba: &[u8]) -> Result<Rgb> {
        check_size(width, height)?;
        if rgba.len() != width * height * 4 {
            return Err(image_error(format!("{} bytes of RGBA for {width}×{height} pixels", rgba.len())));
        }
        let data = rgba.chunks_exact(4).flat_map(|p| on_white(p[3], [p[0], p[1], p[2]])).collect();
        Ok(Rgb { width, height, data })
    }

    pub fn from_rgb(width: usize, height: usize, data: Vec<u8>) -> Result<Rgb> {
        check_size(width, height)?;
        if data.len() != width * height * 3 {
            return Err(image_error(format!("{} bytes of RGB for {width}×{height} pixels", data.len())));
        }
        Ok(Rgb { width, height, data })
    }

    /// Decodes a PNG, JPEG or WebP file (natively; the browser decodes with
    /// `createImageBitmap` and hands over RGBA).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode(bytes: &[u8]) -> Result<Rgb> {
        let format = ::image::guess_format(bytes)
            .map_err(|_| image_error("not a PNG, JPEG or WebP file (unrecognised header)".into()))?;
        let mut reader = ::image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        let mut limits = ::image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE as u32);
        limits.max_image_height = Some(MAX_SIDE as u32);
        reader.limits(limits);
        let decoded = reader.decode().map_err(|e| image_error(format!("{format:?}: {e}")))?;
        let (width, height) = (decoded.width() as usize, decoded.height() as usize);
        if decoded.color().has_alpha() {
            Rgb::from_rgba(width, height, decoded.to_rgba8().as_raw())
        } else {
            Rgb::from_rgb(width, height, decoded.to_rgb8().into_raw())
        }
    }

    /// A hash of the size and pixels (FNV-1a over 8-byte words): tells
    /// images apart for the caches of their rows.
    pub fn fingerprint(&self) -> u64 {
        let step = |h: u64, word: u64| (h ^ word).wrapping_mul(0x100_0000_01b3);
        let mut h = step(step(0xcbf2_9ce4_8422_2325, self.width as u64), self.height as u64);
        let mut words = self.data.chunks_exact(8);
        for word in &mut words {
            h = step(h, u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        words.remainder().iter().fold(h, |h, &b| step(h, b as u64))
    }

    fn transposed(&self) -> Rgb {
        let (w, h) = (self.width, self.height);
        let mut data = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let (src, dst) = ((y * w + x) * 3, (x * h + y) * 3);
                data[dst..dst + 3].copy_from_slice(&self.data[src..src + 3]);
            }
        }
        Rgb { width: h, height: w, data }
    }
}

fn image_error(message: String) -> Error {
    Error::Image { message }
}

fn check_size(width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(image_error(format!("{width}×{height} pixels; each side must be 1 to {MAX_SIDE}")));
    }
    Ok(())
}

/// Pillow's `alpha_composite` of (r, g, b, a) over opaque white, in its
/// 7-bit fixed point (AlphaComposite.c).
fn on_white(a: u8, rgb: [u8; 3]) -> [u8; 3] {
    const BITS: u32 = 7;
    if a == 0 {
        return [255; 3];
    }
    let a = a as u32;
    let outa255 = a * 255 + 255 * (255 - a);
    let coef1 = a * 255 * 255 * (1 << BITS) / outa255;
    let coef2 = 255 * (1 << BITS) - coef1;
    let div255 = |v: u32| ((v >> 8) + v) >> 8;
    rgb.map(|c| (div255(c as u32 * coef1 + 255 * coef2 + (0x80 << BITS)) >> BITS) as u8)
}

/// Rows and columns of 336-pixel crops the HD transform makes of a
/// `width`×`height` image (before the global view).
pub fn crop_grid(width: usize, height: usize, num_crops: usize) -> (usize, usize) {
    let (w, h) = hd_size(width, height, num_crops);
    (h / CROP, w / CROP)
}

/// Image rows an image of this crop grid takes in the prompt: each crop's
/// 12×12 merged patches with a newline per row, a separator, and the global
/// view's 12×12 with its newlines.
pub fn image_tokens(crops_h: usize, crops_w: usize) -> usize {
    (crops_h * crops_w + 1) * 144 + 1 + (crops_h + 1) * 12
}

/// The HD transform's resized width and height before padding, in the landscape view.
fn resized_size(long: usize, short: usize, num_crops: usize) -> (usize, usize) {
    let ratio = long as f64 / short as f64;
    let mut scale = 1usize;
    while (scale as f64) * (scale as f64 / ratio).ceil() <= num_crops as f64 {
        scale += 1;
    }
    let scale = (scale - 1).max(1);
    let new_w = scale * CROP;
    let new_h = ((new_w as f64 / ratio) as usize).max(1);
    (new_w, new_h)
}

/// Width and height after the HD transform's resize and padding.
fn hd_size(width: usize, height: usize, num_crops: usize) -> (usize, usize) {
    let transposed = width < height;
    let (long, short) = if transposed { (height, width) } else { (width, height) };
    let (new_w, new_h) = resized_size(long, short, num_crops);
    let padded_h = new_h.div_ceil(CROP) * CROP;
    if transposed {
        (padded_h, new_w)
    } else {
        (new_w, padded_h)
    }
}

/// One image ready for the vision tower.
pub struct HdImage {
    pub crops_h: usize,
    pub crops_w: usize,
    /// [1 + crops_h·crops_w, 3, 336, 336]: the global view, then the crops row-major.
    pub pixels: Vec<f32>,
    /// The resized and padded 8-bit image the crops are cut from.
    pub hd: Rgb,
}

impl HdImage {
    pub fn crops(&self) -> usize {
        1 + self.crops_h * self.crops_w
    }

    pub fn tokens(&self) -> usize {
        image_tokens(self.crops_h, self.crops_w)
    }
}

/// The processor's HD transform of `image` with at most `num_crops` crops.
pub fn hd_transform(image: &Rgb, num_crops: usize) -> HdImage {
    let transposed = image.width < image.height;
    let landscape = if transposed { image.transposed() } else { image.clone() };
    let (new_w, new_h) = resized_size(landscape.width, landscape.height, num_crops);
    let resized = resize_bilinear(&landscape, new_w, new_h);
    let padded = pad_height(&resized);
    let hd = if transposed { padded.transposed() } else { padded };
    let (w, h) = (hd.width, hd.height);
    let (crops_h, crops_w) = (h / CROP, w / CROP);

    // ToTensor and Normalize: [3, h, w] in f32.
    let plane = w * h;
    let mut normalised = vec![0f32; 3 * plane];
    for (i, px) in hd.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            normalised[c * plane + i] = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let crop_len = 3 * CROP * CROP;
    let mut pixels = Vec::with_capacity((1 + crops_h * crops_w) * crop_len);
    pixels.extend(resize_bicubic(&normalised, w, h, CROP, CROP));
    for cy in 0..crops_h {
        for cx in 0..crops_w {
            for c in 0..3 {
                for y in 0..CROP {
                    let row = c * plane + (cy * CROP + y) * w + cx * CROP;
                    pixels.extend_from_slice(&normalised[row..row + CROP]);
                }
            }
        }
    }
    HdImage { crops_h, crops_w, pixels, hd }
}

/// Pads the height to a multiple of 336 with white, centred (the extra row below).
fn pad_height(image: &Rgb) -> Rgb {
    let target = image.height.div_ceil(CROP) * CROP;
    let top = (target - image.height) / 2;
    let row = image.width * 3;
    let mut data = vec![255u8; target * row];
    data[top * row..(top + image.height) * row].copy_from_slice(&image.data);
    Rgb { width: image.width, height: target, data }
}

// ---- Pillow's BILINEAR resample (libImaging/Resample.c), exactly ----

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Each output pixel's first input index and its fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>, // (first, count) per output pixel
    weights: Vec<i32>,           // [out, ksize]
    ksize: usize,
}

fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C's (int) truncates
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = if t.abs() < 1.0 { 1.0 - t.abs() } else { 0.0 };
            *kx = w;
            ww += w;
        }
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * (1 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients { bounds, weights, ksize }
}

fn clip8(v: i32) -> u8 {
    if v >= 1 << PRECISION_BITS << 8 {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((width, height), BILINEAR)`: a horizontal pass, then a
/// vertical one, each rounded to 8 bits; a pass is skipped when its size is unchanged.
fn resize_bilinear(image: &Rgb, width: usize, height: usize) -> Rgb {
    let mut current = image.clone();
    if width != image.width {
        let c = coefficients(image.width, width);
        let mut data = vec![0u8; width * image.height * 3];
        for y in 0..image.height {
            let src = &image.data[y * image.width * 3..(y + 1) * image.width * 3];
            for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + count];
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &src[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for ch in 0..3 {
                        ss[ch] += p[ch] as i32 * kx;
                    }
                }
                let out = (y * width + xx) * 3;
                for ch in 0..3 {
                    data[out + ch] = clip8(ss[ch]);
                }
            }
        }
        current = Rgb { width, height: image.height, data };
    }
    if height != current.height {
        let c = coefficients(current.height, height);
        let row = width * 3;
        let mut data = vec![0u8; height * row];
        for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
            let k = &c.weights[yy * c.ksize..yy * c.ksize + count];
            for i in 0..row {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss += current.data[(ymin + y) * row + i] as i32 * ky;
                }
                data[yy * row + i] = clip8(ss);
            }
        }
        current = Rgb { width, height, data };
    }
    current
}

// ---- torch.nn.functional.interpolate(mode="bicubic", align_corners=False) ----

/// The cubic convolution weights of torch's upsample_bicubic2d (A = -0.75)
/// for the fractional offset `t`.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let u = 1.0 - t;
    [far(t + 1.0), near(t), near(u), far(u + 1.0)]
}

/// Per output index: the four clamped source indices and their weights.
fn bicubic_taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(in_size as i64 - 1);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let at = |d: i64| (index + d).clamp(0, in_size as i64 - 1) as usize;
            ([at(-1), at(0), at(1), at(2)], cubic_weights(t))
        })
        .collect()
}

/// Bicubic resize of a [3, h, w] f32 image to [3, out_h, out_w].
fn resize_bicubic(x: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let (xs, ys) = (bicubic_taps(w, out_w), bicubic_taps(h, out_h));
    let mut out = Vec::with_capacity(3 * out_w * out_h);
    for c in 0..3 {
        let plane = &x[c * w * h..(c + 1) * w * h];
        for (yi, yw) in &ys {
            for (xi, xw) in &xs {
                // As torch: interpolate each of the 4 rows along x, then along y.
                let row = |r: usize| {
                    let line = &plane[r * w..(r + 1) * w];
                    xw[0] * line[xi[0]] + xw[1] * line[xi[1]] + xw[2] * line[xi[2]] + xw[3] * line[xi[3]]
                };
                let (r0, r1, r2, r3) = (row(yi[0]), row(yi[1]), row(yi[2]), row(yi[3]));
                out.push(yw[0] * r0 + yw[1] * r1 + yw[2] * r2 + yw[3] * r3);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_follow_the_processor() {
        assert_eq!(image_tokens(1, 1), 313);
        assert_eq!(image_tokens(2, 2), 757);
        // 420×250 at 4 crops: scale 2 → 672×400, padded to 672×672.
        assert_eq!(crop_grid(420, 250, 4), (2, 2));
        // A portrait image is transposed: 150×380 → 2 rows of 1 crop.
        assert_eq!(crop_grid(150, 380, 4), (2, 1));
        assert_eq!(crop_grid(700, 160, 4), (1, 4));
    }

    #[test]
    fn transparent_pixels_become_white() {
        assert_eq!(on_white(0, [10, 20, 30]), [255, 255, 255]);
        assert_eq!(on_white(255, [10, 20, 30]), [10, 20, 30]);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(Rgb::from_rgba(0, 4, &[]).is_err());
        assert!(Rgb::from_rgba(2, 2, &[0; 15]).is_err());
    }
}
