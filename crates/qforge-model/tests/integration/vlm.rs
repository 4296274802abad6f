//! Qwen2.5-VL parity with transformers 4.50 on the tiny checkpoints of
//! tools/fixtures/gen_vlm.py (processor, M-RoPE positions, vision tower, logits, gradients), and
//! the invariants parity does not pin (batch = single, cached decode = full forward).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use qforge_model::vl::processor::{self, ProcessorConfig, RgbImage};
use qforge_model::vl::{VisualGrids, VisualInputs, VlModel, mrope_positions};
use qforge_model::{Batch, ModelError};
use serde_json::Value;

use crate::util::{assert_close, max_abs, max_abs_diff};

const VARIANTS: [&str; 2] = ["qwen2_5_vl_tied", "qwen2_5_vl_untied"];
/// Seconds per temporal patch of the fixture's video (`second_per_grid_ts`).
const SPG: f32 = 0.75;
const PAD: u32 = 62;

fn fixture(name: &str) -> PathBuf {
    qforge_testkit::fixture("vlm").join(name)
}

fn load(variant: &str) -> VlModel {
    VlModel::load(&fixture(variant), DType::F32, &Device::Cpu).unwrap()
}

fn reference(variant: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(variant).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("processor.json")).unwrap()).unwrap()
}

/// The fixture's raw pixels as RGB images (`[H, W, 3]` and `[T, H, W, 3]` u8 tensors).
fn pixels() -> (RgbImage, RgbImage, Vec<RgbImage>) {
    let raw = candle_core::safetensors::load(fixture("pixels.safetensors"), &Device::Cpu).unwrap();
    let image = |t: &Tensor| {
        let (h, w, _) = t.dims3().unwrap();
        RgbImage::new(h, w, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
    };
    let video = &raw["video"];
    let frames = (0..video.dim(0).unwrap())
        .map(|i| image(&video.i(i).unwrap()))
        .collect();
    (image(&raw["image_a"]), image(&raw["image_b"]), frames)
}

fn processor_config(variant: &str) -> ProcessorConfig {
    ProcessorConfig::from_file(&fixture(variant).join("preprocessor_config.json")).unwrap()
}

/// The fixture's visual inputs through our processor.
fn visual_inputs(config: &ProcessorConfig) -> VisualInputs {
    let (a, b, frames) = pixels();
    VisualInputs {
        images: vec![
            processor::process_image(config, &a).unwrap(),
            processor::process_image(config, &b).unwrap(),
        ],
        videos: vec![(processor::process_video(config, &frames).unwrap(), SPG)],
    }
}

fn grid_tensor(grids: &[[usize; 3]]) -> Tensor {
    let flat: Vec<i32> = grids.iter().flatten().map(|x| *x as i32).collect();
    Tensor::from_vec(flat, (grids.len(), 3), &Device::Cpu).unwrap()
}

fn pixel_tensor(patches: &[&processor::Patches]) -> Tensor {
    let values: Vec<f32> = patches
        .iter()
        .flat_map(|p| p.pixel_values.clone())
        .collect();
    let len = values.len() / patches.iter().map(|p| p.rows()).sum::<usize>();
    Tensor::from_vec(values.clone(), (values.len() / len, len), &Device::Cpu).unwrap()
}

#[test]
fn smart_resize_matches_transformers_including_halves_and_budgets() {
    let cases = cases();
    for case in cases["smart_resize"].as_array().unwrap() {
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let got = processor::smart_resize(
            n("height"),
            n("width"),
            28,
            n("min_pixels"),
            n("max_pixels"),
        )
        .unwrap();
        let want = (
            case["resized"][0].as_u64().unwrap() as usize,
            case["resized"][1].as_u64().unwrap() as usize,
        );
        assert_eq!(got, want, "{case}");
    }
    for case in cases["smart_resize_errors"].as_array().unwrap() {
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let err =
            processor::smart_resize(n("height"), n("width"), 28, 3136, 12_845_056).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::ImageTooSmall { .. } | ModelError::ImageAspectRatio { .. }
            ),
            "{case}: {err}"
        );
    }
}

#[test]
fn processor_output_matches_transformers_from_raw_pixels_and_from_png() {
    let reference = reference(VARIANTS[0]);
    let config = processor_config(VARIANTS[0]);
    let inputs = visual_inputs(&config);
    let images: Vec<&processor::Patches> = inputs.images.iter().collect();
    let grids: Vec<[usize; 3]> = images.iter().map(|p| p.grid_thw).collect();
    assert_eq!(grids, [[1, 12, 8], [1, 4, 6]]);
    assert_eq!(
        grid_tensor(&grids).to_vec2::<i32>().unwrap(),
        reference["image.grid_thw"].to_vec2::<i32>().unwrap()
    );
    assert_close(
        &pixel_tensor(&images),
        &reference["image.pixel_values"],
        1e-6,
        "image pixels",
    );
    let (video, _) = &inputs.videos[0];
    assert_eq!(video.grid_thw, [3, 8, 12]);
    assert_close(
        &pixel_tensor(&[video]),
        &reference["video.pixel_values"],
        1e-6,
        "video pixels",
    );
    // Decoding the PNG copies gives the same pixels.
    let decoded = RgbImage::open(&fixture("image_a.png")).unwrap();
    assert_eq!(decoded, pixels().0);
    assert_eq!(
        processor::process_image(&config, &decoded).unwrap(),
        inputs.images[0]
    );
}

#[test]
fn bad_images_are_typed_errors_naming_the_image() {
    let err = RgbImage::decode(b"not an image", "shot.png").unwrap_err();
    assert!(matches!(err, ModelError::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("shot.png"), "{err}");
    let png = std::fs::read(fixture("image_b.png")).unwrap();
    let err = RgbImage::decode(&png[..png.len() / 2], "cut.png").unwrap_err();
    assert!(err.to_string().contains("cut.png"), "{err}");
    let tiny = RgbImage::new(10, 400, vec![0; 10 * 400 * 3]).unwrap();
    let err = processor::process_image(&ProcessorConfig::default(), &tiny).unwrap_err();
    assert!(
        matches!(err, ModelError::ImageTooSmall { height: 10, .. }),
        "{err}"
    );
}

#[test]
fn rope_index_matches_transformers_for_fractional_seconds_and_padded_batches() {
    for case in cases()["rope_index"].as_array().unwrap() {
        let grids = |k: &str| -> Vec<[usize; 3]> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| {
                    let g: Vec<usize> = serde_json::from_value(g.clone()).unwrap();
                    [g[0], g[1], g[2]]
                })
                .collect()
        };
        let ids: Vec<Vec<u32>> = serde_json::from_value(case["ids"].clone()).unwrap();
        let mask: Vec<Vec<u32>> = serde_json::from_value(case["mask"].clone()).unwrap();
        let rows: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, m)| **m == 1)
                    .map(|(x, _)| *x)
                    .collect()
            })
            .collect();
        let row_refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let positions = mrope_positions(
            &row_refs,
            qforge_model::vl::VisionTokenIds {
                image: 60,
                video: 61,
                vision_start: 58,
            },
            &VisualGrids {
                images: grids("image_grid_thw"),
                videos: grids("video_grid_thw"),
                second_per_grid: serde_json::from_value(case["second_per_grid_ts"].clone())
                    .unwrap(),
            },
            2,
            2.0,
        )
        .unwrap();
        let want: Vec<Vec<Vec<i64>>> = serde_json::from_value(case["positions"].clone()).unwrap();
        let deltas: Vec<i64> = serde_json::from_value(case["deltas"].clone()).unwrap();
        for (b, p) in positions.iter().enumerate() {
            let real: Vec<usize> = (0..mask[b].len()).filter(|&i| mask[b][i] == 1).collect();
            for axis in 0..3 {
                let expected: Vec<u32> = real.iter().map(|&i| want[axis][b][i] as u32).collect();
                assert_eq!(p.axes[axis], expected, "{case} row {b} axis {axis}");
            }
            assert_eq!(
                i64::from(p.next) - ids[b].len() as i64,
                deltas[b],
                "row {b} delta"
            );
        }
    }
}

#[test]
fn vision_tower_matches_transformers_for_images_and_video() {
    for variant in VARIANTS {
        let reference = reference(variant);
        for differentiable in [false, true] {
            let mut model = load(variant);
            model.set_differentiable(differentiable);
            let what = format!("{variant} differentiable={differentiable}");
            let inputs = visual_inputs(&processor_config(variant));
            let images: Vec<&processor::Patches> = inputs.images.iter().collect();
            let grids: Vec<[usize; 3]> = images.iter().map(|p| p.grid_thw).collect();
            let pixels = pixel_tensor(&images);
            let before = model.vision.hidden_before_merger(&pixels, &grids).unwrap();
            assert_close(
                &before,
                &reference["image.blocks_out"],
                1e-4,
                &format!("{what} blocks"),
            );
            let embeds = model.encode(&images).unwrap().unwrap();
            assert_close(
                &embeds,
                &reference["image.embeds"],
                1e-4,
                &format!("{what} images"),
            );
            let video = model.encode(&[&inputs.videos[0].0]).unwrap().unwrap();
            assert_close(
                &video,
                &reference["video.embeds"],
                1e-4,
                &format!("{what} video"),
            );
        }
    }
}

/// The fixture's prompts (placeholders expanded), from the reference's ids and mask.
fn rows(reference: &HashMap<String, Tensor>, side: &str) -> Vec<Vec<u32>> {
    let ids = reference[&format!("{side}.ids")].to_vec2::<i32>().unwrap();
    let mask = reference[&format!("{side}.mask")].to_vec2::<i32>().unwrap();
    ids.iter()
        .zip(&mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .filter(|(_, m)| **m == 1)
                .map(|(x, _)| *x as u32)
                .collect()
        })
        .collect()
}

fn vl_batch(
    model: &VlModel,
    rows: &[Vec<u32>],
    inputs: &VisualInputs,
    left: bool,
) -> qforge_model::vl::VlBatch {
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    model.batch(&refs, inputs, PAD, left).unwrap()
}

#[test]
fn logits_match_transformers_for_left_and_right_padded_mixed_batches() {
    for variant in VARIANTS {
        let reference = reference(variant);
        let model = load(variant);
        let inputs = visual_inputs(&processor_config(variant));
        for (side, left) in [("left", true), ("right", false)] {
            let rows = rows(&reference, side);
            let vl = vl_batch(&model, &rows, &inputs, left);
            let want_pos = reference[&format!("{side}.positions")]
                .to_vec3::<i32>()
                .unwrap();
            let got = vl.batch.mrope.as_ref().unwrap();
            for axis in 0..3 {
                for b in 0..rows.len() {
                    let want: Vec<u32> = want_pos[axis][b].iter().map(|x| *x as u32).collect();
                    assert_eq!(got[axis][b], want, "{variant} {side} axis {axis} row {b}");
                }
            }
            let deltas = reference[&format!("{side}.deltas")]
                .to_vec1::<i32>()
                .unwrap();
            assert_eq!(
                vl.rope_deltas,
                deltas.iter().map(|d| i64::from(*d)).collect::<Vec<_>>()
            );
            let logits = model
                .text
                .logits(&model.text.forward(&vl.batch, None).unwrap())
                .unwrap();
            let expected = &reference[&format!("{side}.logits")];
            let t = logits.dim(1).unwrap();
            for (b, row) in rows.iter().enumerate() {
                let start = if left { t - row.len() } else { 0 };
                let real = |x: &Tensor| x.i(b).unwrap().narrow(0, start, row.len()).unwrap();
                assert_close(
                    &real(&logits),
                    &real(expected),
                    1e-4,
                    &format!("{variant} {side} row {b}"),
                );
            }
        }
    }
}

#[test]
fn a_row_in_a_batch_equals_the_row_alone() {
    let variant = VARIANTS[0];
    let reference = reference(variant);
    let model = load(variant);
    let inputs = visual_inputs(&processor_config(variant));
    let rows = rows(&reference, "left");
    // Row 0 has the first image and the video; row 1 the second image; row 2 is text only.
    let alone = [
        VisualInputs {
            images: vec![inputs.images[0].clone()],
            videos: inputs.videos.clone(),
        },
        VisualInputs {
            images: vec![inputs.images[1].clone()],
            videos: vec![],
        },
        VisualInputs::default(),
    ];
    for (i, row) in rows.iter().enumerate() {
        let vl = vl_batch(&model, std::slice::from_ref(row), &alone[i], true);
        let logits = model
            .text
            .logits(&model.text.forward(&vl.batch, None).unwrap())
            .unwrap();
        assert_close(
            &logits.i(0).unwrap(),
            &reference[&format!("single{i}.logits")],
            1e-4,
            &format!("row {i} alone"),
        );
    }
}

#[test]
fn cached_decoding_after_an_image_prefix_equals_the_full_forward() {
    let variant = VARIANTS[1];
    let reference = reference(variant);
    let model = load(variant);
    let inputs = VisualInputs {
        images: vec![visual_inputs(&processor_config(variant)).images[1].clone()],
        videos: vec![],
    };
    let row = rows(&reference, "left")[1].clone();
    let full = vl_batch(&model, std::slice::from_ref(&row), &inputs, true);
    let full_logits = model
        .text
        .logits(&model.text.forward(&full.batch, None).unwrap())
        .unwrap();
    // Prefill everything up to the last three tokens (image included), then one at a time.
    let split = row.len() - 3;
    let prefix = vl_batch(&model, &[row[..split].to_vec()], &inputs, true);
    let mut cache = model.text.new_cache();
    model
        .text
        .forward(&prefix.batch, Some(&mut [&mut cache]))
        .unwrap();
    let mut next = prefix.next_positions[0];
    for (k, &token) in row[split..].iter().enumerate() {
        let step = Batch::left_padded(&[&[token]], &[next as usize], PAD, &Device::Cpu).unwrap();
        let hidden = model.text.forward(&step, Some(&mut [&mut cache])).unwrap();
        let logits = model.text.logits(&hidden).unwrap();
        assert_close(
            &logits.i((0, 0)).unwrap(),
            &full_logits.i((0, split + k)).unwrap(),
            1e-4,
            &format!("decode step {k}"),
        );
        next += 1;
    }
}

/// The fixture script's loss: mean cross-entropy over real next tokens whose target is text.
fn left_padded_loss(
    model: &VlModel,
    reference: &HashMap<String, Tensor>,
    inputs: &VisualInputs,
) -> Tensor {
    let rows = rows(reference, "left");
    let vl = vl_batch(model, &rows, inputs, true);
    let logprobs = model.text.next_token_logprobs(&vl.batch).unwrap();
    let ids = reference["left.ids"].to_vec2::<i32>().unwrap();
    let mask = reference["left.mask"].to_vec2::<i32>().unwrap();
    let t = ids[0].len();
    let mut weights = vec![0f32; ids.len() * (t - 1)];
    let mut count = 0usize;
    for b in 0..ids.len() {
        for j in 1..t {
            let target = ids[b][j] as u32;
            let real = mask[b][j] == 1 && mask[b][j - 1] == 1;
            if real && target != model.tokens.image && target != model.tokens.video {
                weights[b * (t - 1) + j - 1] = 1.0;
                count += 1;
            }
        }
    }
    let weights = Tensor::from_vec(weights, (ids.len(), t - 1), &Device::Cpu).unwrap();
    ((logprobs * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
        / count as f64)
        .unwrap()
}

#[test]
fn gradients_of_every_text_and_vision_parameter_match_transformers() {
    for variant in VARIANTS {
        let reference = reference(variant);
        let (model, vars) = load(variant).into_trainable().unwrap();
        let inputs = visual_inputs(&processor_config(variant));
        let loss = left_padded_loss(&model, &reference, &inputs);
        assert_close(
            &loss.reshape(1).unwrap(),
            &reference["left.loss"],
            1e-5,
            &format!("{variant} loss"),
        );
        let grads = loss.backward().unwrap();
        assert!(vars.iter().any(|(n, _)| n.starts_with("visual.")));
        for (name, var) in &vars {
            let expected = &reference[&format!("grad.{name}")];
            let actual = grads
                .get(var)
                .unwrap_or_else(|| panic!("{variant}: no gradient for {name}"));
            assert!(
                max_abs(actual) > 0.0,
                "{variant}: {name} got an all-zero gradient"
            );
            let rel = max_abs_diff(actual, expected) / max_abs(expected).max(1e-12);
            assert!(rel <= 1e-3, "{variant} grad {name}: relative error {rel}");
        }
    }
}

#[test]
fn a_saved_model_loads_back_with_the_same_logits() {
    let variant = VARIANTS[1];
    let model = load(variant);
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path(), usize::MAX).unwrap();
    let back = VlModel::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let inputs = visual_inputs(&processor_config(variant));
    let rows = rows(&reference(variant), "left");
    let a = vl_batch(&model, &rows, &inputs, true);
    let b = vl_batch(&back, &rows, &inputs, true);
    let la = model.text.forward(&a.batch, None).unwrap();
    let lb = back.text.forward(&b.batch, None).unwrap();
    assert_eq!(max_abs_diff(&la, &lb), 0.0);
}

#[test]
fn placeholder_counts_that_disagree_with_the_inputs_are_errors() {
    let variant = VARIANTS[0];
    let model = load(variant);
    let inputs = visual_inputs(&processor_config(variant));
    // Row 1 of the fixture holds only the second image: given all inputs, counts disagree.
    let rows = rows(&reference(variant), "left");
    let err = model
        .batch(&[rows[1].as_slice()], &inputs, PAD, true)
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
}

/// LoRA adapts the vision tower too (its attention `qkv`/`proj` and, by PEFT's suffix match,
/// its MLP): every adapter gets a gradient, and a saved adapter loads and merges back to the
/// same logits.
#[test]
fn lora_trains_decoder_and_vision_adapters_and_round_trips() {
    use qforge_model::{LoraConfig, add_lora, load_adapter, merge_lora, save_adapter};
    let variant = VARIANTS[1];
    let reference = reference(variant);
    let inputs = visual_inputs(&processor_config(variant));
    let config = LoraConfig {
        r: 2,
        alpha: 4.0,
        target_modules: ["q_proj", "v_proj", "qkv", "proj", "gate_proj"]
            .map(String::from)
            .to_vec(),
    };
    let mut model = load(variant);
    let before = left_padded_loss(&model, &reference, &inputs);
    let vars = add_lora(&mut model, &config, 7).unwrap();
    assert!(
        vars.iter()
            .any(|(n, _)| n.contains("visual.blocks.0.attn.qkv"))
    );
    assert!(
        vars.iter()
            .any(|(n, _)| n.contains("visual.blocks.3.mlp.gate_proj"))
    );
    let loss = left_padded_loss(&model, &reference, &inputs);
    assert_close(&loss, &before, 1e-6, "fresh adapters change nothing");
    let grads = loss.backward().unwrap();
    for (name, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(max_abs(g) > 0.0, "{name}: zero gradient");
        var.set(&(var.as_tensor() - (g * 50.0).unwrap()).unwrap())
            .unwrap();
    }
    let rows = rows(&reference, "left");
    let logits = |m: &VlModel| {
        let vl = vl_batch(m, &rows, &inputs, true);
        m.text
            .logits(&m.text.forward(&vl.batch, None).unwrap())
            .unwrap()
    };
    let adapted = logits(&model);
    assert!(
        max_abs_diff(&adapted, &logits(&load(variant))) > 1e-3,
        "the step moved the model"
    );
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &config, dir.path(), variant).unwrap();
    let mut loaded = load(variant);
    load_adapter(&mut loaded, dir.path()).unwrap();
    assert_close(&logits(&loaded), &adapted, 1e-5, "loaded adapter");
    merge_lora(&mut loaded).unwrap();
    assert_close(&logits(&loaded), &adapted, 1e-4, "merged adapter");
}

/// A frozen tower contributes constants: only decoder parameters train, and their gradients are
/// the ones of the fully trainable model.
#[test]
fn a_frozen_vision_tower_trains_only_the_decoder_with_the_same_gradients() {
    let variant = VARIANTS[0];
    let reference = reference(variant);
    let inputs = visual_inputs(&processor_config(variant));
    let (frozen, vars) = load(variant).into_trainable_with(false).unwrap();
    assert!(vars.iter().all(|(n, _)| !n.starts_with("visual.")));
    let grads = left_padded_loss(&frozen, &reference, &inputs)
        .backward()
        .unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let rel = max_abs_diff(g, &reference[&format!("grad.{name}")])
            / max_abs(&reference[&format!("grad.{name}")]).max(1e-12);
        assert!(rel <= 1e-3, "{name}: relative error {rel}");
    }
}
