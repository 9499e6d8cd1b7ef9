//! The command line, in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::onnx::model_file::ExternalData;
use crate::onnx::WeightType;

/// Export EchoDistill results for the ONNX runtime and the web page.
#[derive(Debug, Parser)]
#[command(name = "exporter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a tokenizer folder with added modifier tokens (e.g. `<new1>`) for a runtime bundle.
    Tokenizer(TokenizerArgs),
    /// Fold a `trainer fit` run into the base model and write the ONNX model folder the runtime
    /// and the web page load.
    Bake(BakeArgs),
    /// Show what a model folder or an `.onnx` file holds: inputs, outputs, opset, parameters,
    /// external data, and the manifest's hashes checked.
    Inspect(InspectArgs),
}

/// `exporter bake`.
#[derive(Debug, Args)]
pub struct BakeArgs {
    /// The base model: a diffusers folder or a Hugging Face repo id (stabilityai/sd-turbo).
    #[arg(long, value_name = "DIR|REPO")]
    pub base: String,
    /// A finished `trainer fit` run folder (any method); without it the base is baked as is.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<PathBuf>,
    /// The model folder to write (written beside and renamed into place).
    #[arg(long, value_name = "MODEL_DIR")]
    pub out: PathBuf,
    /// Weight precision; inputs and outputs stay f32 either way.
    #[arg(long, value_parser = WeightType::parse, default_value = "f32")]
    pub dtype: WeightType,
    /// Step counts the model is meant for, recorded in the manifest [default: 1,2,4 for the
    /// one-step student, 25 for a run of the teacher].
    #[arg(long, value_name = "N,N,...")]
    pub steps: Option<String>,
    /// Image height the model is baked for (a multiple of the VAE's factor, 8).
    #[arg(long, default_value_t = 512)]
    pub height: u32,
    /// Image width.
    #[arg(long, default_value_t = 512)]
    pub width: u32,
    /// The text encoder folder the run's token rows belong to [default: the one the run
    /// trained them in: the teacher's for EchoDistill's shared encoder, else the base's].
    #[arg(long, value_name = "DIR")]
    pub text_encoder: Option<PathBuf>,
    /// Where weights go: inline unless a file would pass protobuf's 2 GiB (auto), always in a
    /// `<file>_data` file beside it, or never (refusing a model too big for that).
    #[arg(long, value_enum, default_value_t = ExternalData::Auto)]
    pub external_data: ExternalData,
    /// Write one `pipeline.onnx` (token ids + noise + step count in, RGB image out: text
    /// encoder, the UNet unrolled per step with the sampler's math, VAE scaling and decoder,
    /// [0, 255] conversion) instead of the three networks. For the one-step student's unguided,
    /// deterministic sampling.
    #[arg(long, conflicts_with = "patch")]
    pub fused: bool,
    /// Replace MODEL_DIR (or the --patch output file) if it exists.
    #[arg(long)]
    pub force: bool,
    /// Instead of writing a model folder, write the run's learned matrices into this existing
    /// UNet ONNX (found by content, as stored or transposed) and save it as --out FILE.onnx.
    #[arg(long, value_name = "BASE.onnx")]
    pub patch: Option<PathBuf>,
}

/// `exporter inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model folder written by `exporter bake`, or one `.onnx` file.
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// The source: a diffusers `tokenizer/` folder, or a model folder that contains one.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// A token to add with the next free id (repeatable, in id order).
    #[arg(long = "add-token", value_name = "TOKEN")]
    pub add_tokens: Vec<String>,
    /// Where to write the folder (created if missing; files are replaced one by one, atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}
