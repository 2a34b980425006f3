// The two Momentum² Teacher view pipelines on a batch of uint8 images
// (trainer/src/augment.rs is the CPU reference; trainer/src/augment/gpu.rs
// draws the same parameters and launches these):
//   augment_crop_taps            PIL's antialiased bilinear resampling taps of
//                                each crop, as the CPU's Taps::new computes them
//   augment_resized_crop         crop + resize with those taps + channel matching
//   augment_color_jitter         one block per image: the jitter ops in their
//                                drawn order, the contrast mean reduced between
//   augment_blur_rows            horizontal Gaussian pass (blurred images only)
//   augment_blur_columns_normalise_<T>
//                                vertical pass, grayscale, flip, solarize,
//                                normalise, store as T
// Stages run in the CPU's order, with the CPU's float operation order, so the
// emulator matches the CPU up to the contrast mean's summation order.

// Per-image integers, `AUG_INTS` per image (packed by augment/gpu.rs).
#define AUG_SRC_OFFSET_LO 0  // first byte of the image in the pixel buffer: a
                             // 64-bit offset, low and high 32 bits (AUG_SRC_OFFSET_HI)
#define AUG_SRC_WIDTH 1
#define AUG_SRC_CHANNELS 2  // 1 or 3
#define AUG_CROP_TOP 3
#define AUG_CROP_LEFT 4
#define AUG_CROP_HEIGHT 5
#define AUG_CROP_WIDTH 6
#define AUG_JITTER 7        // 0 or 1
#define AUG_JITTER_ORDER 8  // op k in bits 2k..2k+1 (AUG_OP_*)
#define AUG_BLUR_RADIUS 9   // 0: not blurred
#define AUG_GRAYSCALE 10
#define AUG_FLIP 11
#define AUG_SOLARIZE 12
#define AUG_SRC_OFFSET_HI 13
#define AUG_INTS 14

// Per-image floats, `AUG_FLOATS` per image: the jitter factors.
#define AUG_BRIGHTNESS 0
#define AUG_CONTRAST 1
#define AUG_SATURATION 2
#define AUG_HUE 3
#define AUG_FLOATS 4

#define AUG_OP_BRIGHTNESS 0
#define AUG_OP_CONTRAST 1
#define AUG_OP_SATURATION 2
#define AUG_OP_HUE 3

// torchvision's rgb_to_grayscale weights.
__device__ __forceinline__ float aug_luma(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

__device__ __forceinline__ float aug_clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

// The first byte of an image: its 64-bit offset reassembled from two ints,
// since a batch's pixels can pass 2 GiB (128 images of 4000×3000×3 do).
__device__ __forceinline__ const uint8_t* aug_source(const uint8_t* pixels, const int* ip) {
    uint64_t hi = static_cast<uint32_t>(ip[AUG_SRC_OFFSET_HI]);
    uint64_t lo = static_cast<uint32_t>(ip[AUG_SRC_OFFSET_LO]);
    return pixels + ((hi << 32) | lo);
}

// Reflect-101 border (torchvision's blur padding) for |overshoot| < n.
__device__ __forceinline__ int aug_reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// Rotates the hue of one RGB pixel by `shift` turns in HSV.
__device__ __forceinline__ void aug_adjust_hue(float* p, float shift) {
    float r = p[0], g = p[1], b = p[2];
    float mx = fmaxf(fmaxf(r, g), b), mn = fminf(fminf(r, g), b);
    float delta = mx - mn;
    if (delta <= 0.0f) return;  // grey: rotating an undefined hue changes nothing
    float h = mx == r ? (g - b) / delta : (mx == g ? 2.0f + (b - r) / delta : 4.0f + (r - g) / delta);
    h = h / 6.0f + shift;
    h = fmodf(h, 1.0f);  // Euclidean remainder, as Rust's rem_euclid
    if (h < 0.0f) h += 1.0f;
    h *= 6.0f;
    float v = mx, s = delta / mx;
    int sector = min(static_cast<int>(floorf(h)), 5);
    float f = h - static_cast<float>(sector);
    float pv = v * (1.0f - s), qv = v * (1.0f - s * f), tv = v * (1.0f - s * (1.0f - f));
    switch (sector) {  // r, g and b are copies: p can be overwritten
        case 0: p[0] = v, p[1] = tv, p[2] = pv; break;
        case 1: p[0] = qv, p[1] = v, p[2] = pv; break;
        case 2: p[0] = pv, p[1] = v, p[2] = tv; break;
        case 3: p[0] = pv, p[1] = qv, p[2] = v; break;
        case 4: p[0] = tv, p[1] = pv, p[2] = v; break;
        default: p[0] = v, p[1] = pv, p[2] = qv; break;
    }
}

// Applies every jitter op except contrast to one pixel of `c` channels.
__device__ __forceinline__ void aug_pixel_op(float* p, int c, int op, const float* factors) {
    if (op == AUG_OP_BRIGHTNESS) {
        for (int ch = 0; ch < c; ch++) p[ch] = aug_clamp01(p[ch] * factors[AUG_BRIGHTNESS]);
    } else if (op == AUG_OP_SATURATION && c == 3) {
        float factor = factors[AUG_SATURATION];
        float g = (1.0f - factor) * aug_luma(p[0], p[1], p[2]);
        for (int ch = 0; ch < 3; ch++) p[ch] = aug_clamp01(factor * p[ch] + g);
    } else if (op == AUG_OP_HUE && c == 3) {
        aug_adjust_hue(p, factors[AUG_HUE]);
    }
}

// `lo + x·scale` rounded after the product and after the sum, as the CPU
// computes it: a fused multiply-add could move a tap's centre by an ulp.
__device__ __forceinline__ double aug_mul_add_unfused(double x, double scale, double lo) {
#ifdef EMULATED
    volatile double product = x * scale;  // host compilers may fuse too
    return lo + product;
#else
    return __dadd_rn(lo, __dmul_rn(x, scale));
#endif
}

// One thread per (image, axis, output): where output `o` of the crop's rows
// (axis 0) or columns (axis 1) reads, in f64 like the CPU's Taps::new. Writes
// the first source index and the tap count up to the last non-zero weight to
// `taps`, and `tap_stride` weights (zero-padded) to `weights`.
extern "C" __global__ void augment_crop_taps(const int* params, int* taps, float* weights, int n, int size,
                                             int tap_stride) {
    FOR_EACH(i, static_cast<int64_t>(n) * 2 * size) {
        int o = static_cast<int>(i % size), axis = static_cast<int>(i / size % 2);
        const int* ip = params + i / (2 * size) * AUG_INTS;
        int lo = ip[axis == 0 ? AUG_CROP_TOP : AUG_CROP_LEFT];
        int extent = ip[axis == 0 ? AUG_CROP_HEIGHT : AUG_CROP_WIDTH];
        int hi = lo + extent;
        double scale = static_cast<double>(extent) / static_cast<double>(size);
        double support = fmax(scale, 1.0);
        int stride = min(2 * static_cast<int>(ceil(support)) + 1, tap_stride);
        double center = aug_mul_add_unfused(static_cast<double>(o) + 0.5, scale, static_cast<double>(lo));
        int first = min(static_cast<int>(fmax(floor(center - support), static_cast<double>(lo))), hi - 1);
        int last = min(min(static_cast<int>(ceil(center + support)), hi), first + stride);
        float* w = weights + i * tap_stride;
        float total = 0.0f;
        for (int k = 0; k < tap_stride; k++) {
            int x = first + k;
            float wk = 0.0f;
            if (x < last) wk = static_cast<float>(fmax(1.0 - fabs((x + 0.5 - center) / support), 0.0));
            w[k] = wk;
            total += wk;
        }
        int count = 1;
        if (total > 0.0f) {
            for (int k = 0; k < last - first; k++) {
                w[k] /= total;
                if (w[k] != 0.0f) count = k + 1;
            }
        } else {
            w[0] = 1.0f;  // unreachable for in-range centres; keeps the pixel defined
        }
        taps[i * 2] = first;
        taps[i * 2 + 1] = count;
    }
}

// One output pixel per thread: the crop rectangle resampled with separable
// taps (from augment_crop_taps), rows summed first like the CPU, then scaled
// to [0, 1] and converted to `channels`.
extern "C" __global__ void augment_resized_crop(const uint8_t* pixels, const int* params, const int* taps,
                                                const float* weights, float* out, int n, int size, int channels,
                                                int tap_stride) {
    int64_t pixels_per_image = static_cast<int64_t>(size) * size;
    FOR_EACH(i, n * pixels_per_image) {
        int b = static_cast<int>(i / pixels_per_image);
        int oy = static_cast<int>(i / size % size), ox = static_cast<int>(i % size);
        const int* ip = params + static_cast<int64_t>(b) * AUG_INTS;
        int width = ip[AUG_SRC_WIDTH], cin = ip[AUG_SRC_CHANNELS];
        const uint8_t* image = aug_source(pixels, ip);
        int64_t row_tap = (static_cast<int64_t>(b) * 2 + 0) * size + oy;
        int64_t col_tap = (static_cast<int64_t>(b) * 2 + 1) * size + ox;
        int y0 = taps[row_tap * 2], ny = taps[row_tap * 2 + 1];
        int x0 = taps[col_tap * 2], nx = taps[col_tap * 2 + 1];
        const float* wy = weights + row_tap * tap_stride;
        const float* wx = weights + col_tap * tap_stride;
        float acc[3] = {0.0f, 0.0f, 0.0f};
        for (int ky = 0; ky < ny; ky++) {
            float w_row = wy[ky];
            if (w_row == 0.0f) continue;  // the CPU skips these rows too
            const uint8_t* src = image + (static_cast<int64_t>(y0 + ky) * width + x0) * cin;
            float row[3] = {0.0f, 0.0f, 0.0f};
            for (int kx = 0; kx < nx; kx++) {
                for (int ch = 0; ch < cin; ch++) row[ch] += wx[kx] * static_cast<float>(src[kx * cin + ch]);
            }
            for (int ch = 0; ch < cin; ch++) acc[ch] += w_row * row[ch];
        }
        for (int ch = 0; ch < cin; ch++) acc[ch] = aug_clamp01(acc[ch] / 255.0f);
        float* dst = out + i * channels;
        if (cin == channels) {
            for (int ch = 0; ch < channels; ch++) dst[ch] = acc[ch];
        } else if (cin == 1) {
            for (int ch = 0; ch < channels; ch++) dst[ch] = acc[0];
        } else {
            dst[0] = aug_luma(acc[0], acc[1], acc[2]);
        }
    }
}

// One block per image (a multiple of 32 threads), in place on `px` ([n, size,
// size, channels] in [0, 1]). The ops before contrast are applied and the grey
// level summed in one pass; contrast needs that mean, so the rest follows
// after the reduction. Each thread revisits only its own pixels.
extern "C" __global__ void augment_color_jitter(float* px, const int* params, const float* factors, int size,
                                                int channels) {
    __shared__ float scratch[32];
    int b = blockIdx.x;
    const int* ip = params + static_cast<int64_t>(b) * AUG_INTS;
    // Uniform per block, so skipping the barriers below is safe.
    if (ip[AUG_JITTER]) {
        const float* f = factors + static_cast<int64_t>(b) * AUG_FLOATS;
        int order = ip[AUG_JITTER_ORDER];
        int contrast_at = 0;
        while (((order >> (2 * contrast_at)) & 3) != AUG_OP_CONTRAST) contrast_at++;
        int64_t pixels_per_image = static_cast<int64_t>(size) * size;
        float* image = px + b * pixels_per_image * channels;
        float grey_sum = 0.0f;
        for (int64_t p = threadIdx.x; p < pixels_per_image; p += blockDim.x) {
            float v[3];
            for (int ch = 0; ch < channels; ch++) v[ch] = image[p * channels + ch];
            for (int k = 0; k < contrast_at; k++) aug_pixel_op(v, channels, (order >> (2 * k)) & 3, f);
            for (int ch = 0; ch < channels; ch++) image[p * channels + ch] = v[ch];
            grey_sum += channels == 3 ? aug_luma(v[0], v[1], v[2]) : v[0];
        }
        float mean = block_sum(grey_sum, scratch) / static_cast<float>(pixels_per_image);
        float contrast = f[AUG_CONTRAST];
        float offset = (1.0f - contrast) * mean;
        for (int64_t p = threadIdx.x; p < pixels_per_image; p += blockDim.x) {
            float v[3];
            for (int ch = 0; ch < channels; ch++) v[ch] = aug_clamp01(contrast * image[p * channels + ch] + offset);
            for (int k = contrast_at + 1; k < 4; k++) aug_pixel_op(v, channels, (order >> (2 * k)) & 3, f);
            for (int ch = 0; ch < channels; ch++) image[p * channels + ch] = v[ch];
        }
    }
}

// Horizontal Gaussian pass, one element per thread, for blurred images only
// (`weights`: `weight_stride` per image, 2·radius + 1 used).
extern "C" __global__ void augment_blur_rows(const float* px, float* tmp, const int* params, const float* weights,
                                             int n, int size, int channels, int weight_stride) {
    int64_t per_image = static_cast<int64_t>(size) * size * channels;
    FOR_EACH(i, n * per_image) {
        int b = static_cast<int>(i / per_image);
        int radius = params[static_cast<int64_t>(b) * AUG_INTS + AUG_BLUR_RADIUS];
        if (radius > 0) {
            int x = static_cast<int>(i / channels % size);
            int64_t row = i - static_cast<int64_t>(x) * channels;  // element (b, y, 0, ch)
            const float* w = weights + static_cast<int64_t>(b) * weight_stride;
            float acc = 0.0f;
            for (int k = 0; k <= 2 * radius; k++) {
                acc += w[k] * px[row + static_cast<int64_t>(aug_reflect(x + k - radius, size)) * channels];
            }
            tmp[i] = acc;
        }
    }
}

// One output pixel per thread: the vertical Gaussian pass over `tmp` (or the
// unblurred `px`), grayscale, then the flip as a mirrored read, solarize and
// `(v − mean) · inv_std` per channel, stored as T.
template <class T>
__device__ __forceinline__ void blur_columns_normalise(const float* px, const float* tmp, T* out, const int* params,
                                                       const float* weights, int n, int size, int channels,
                                                       int weight_stride, float mean0, float mean1, float mean2,
                                                       float inv_std0, float inv_std1, float inv_std2) {
    const float solarize_threshold = 128.0f / 255.0f;
    float mean[3] = {mean0, mean1, mean2}, inv_std[3] = {inv_std0, inv_std1, inv_std2};
    int64_t pixels_per_image = static_cast<int64_t>(size) * size;
    FOR_EACH(i, n * pixels_per_image) {
        int b = static_cast<int>(i / pixels_per_image);
        int y = static_cast<int>(i / size % size), x = static_cast<int>(i % size);
        const int* ip = params + static_cast<int64_t>(b) * AUG_INTS;
        int radius = ip[AUG_BLUR_RADIUS];
        int xs = ip[AUG_FLIP] ? size - 1 - x : x;
        int64_t image = static_cast<int64_t>(b) * pixels_per_image;
        float v[3];
        if (radius > 0) {
            const float* w = weights + static_cast<int64_t>(b) * weight_stride;
            for (int ch = 0; ch < channels; ch++) v[ch] = 0.0f;
            for (int k = 0; k <= 2 * radius; k++) {
                const float* src = tmp + (image + static_cast<int64_t>(aug_reflect(y + k - radius, size)) * size + xs) *
                                             channels;
                for (int ch = 0; ch < channels; ch++) v[ch] += w[k] * src[ch];
            }
        } else {
            const float* src = px + (image + static_cast<int64_t>(y) * size + xs) * channels;
            for (int ch = 0; ch < channels; ch++) v[ch] = src[ch];
        }
        if (ip[AUG_GRAYSCALE] && channels == 3) {
            float g = aug_luma(v[0], v[1], v[2]);
            v[0] = v[1] = v[2] = g;
        }
        for (int ch = 0; ch < channels; ch++) {
            float value = ip[AUG_SOLARIZE] && v[ch] >= solarize_threshold ? 1.0f - v[ch] : v[ch];
            store(out, i * channels + ch, (value - mean[ch]) * inv_std[ch]);
        }
    }
}

extern "C" __global__ void augment_blur_columns_normalise_f32(const float* px, const float* tmp, float* out,
                                                              const int* params, const float* weights, int n, int size,
                                                              int channels, int weight_stride, float mean0,
                                                              float mean1, float mean2, float inv_std0,
                                                              float inv_std1, float inv_std2) {
    blur_columns_normalise(px, tmp, out, params, weights, n, size, channels, weight_stride, mean0, mean1, mean2,
                           inv_std0, inv_std1, inv_std2);
}
extern "C" __global__ void augment_blur_columns_normalise_bf16(const float* px, const float* tmp, bf16* out,
                                                               const int* params, const float* weights, int n, int size,
                                                               int channels, int weight_stride, float mean0,
                                                               float mean1, float mean2, float inv_std0,
                                                               float inv_std1, float inv_std2) {
    blur_columns_normalise(px, tmp, out, params, weights, n, size, channels, weight_stride, mean0, mean1, mean2,
                           inv_std0, inv_std1, inv_std2);
}
extern "C" __global__ void augment_blur_columns_normalise_f16(const float* px, const float* tmp, f16* out,
                                                              const int* params, const float* weights, int n, int size,
                                                              int channels, int weight_stride, float mean0,
                                                              float mean1, float mean2, float inv_std0,
                                                              float inv_std1, float inv_std2) {
    blur_columns_normalise(px, tmp, out, params, weights, n, size, channels, weight_stride, mean0, mean1, mean2,
                           inv_std0, inv_std1, inv_std2);
}
