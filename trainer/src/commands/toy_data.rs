//! `trainer toy-data`: writes the toy world's DreamBench-shaped subjects and a preview of its
//! pre-training data.

use anyhow::Result;
use trainer::toy::{write_toy_data, ToyWorld, ToyWorldConfig};

use crate::cli::ToyDataArgs;

pub fn run(args: &ToyDataArgs) -> Result<()> {
    let world = ToyWorld::new(ToyWorldConfig {
        seed: args.seed,
        resolution: args.resolution,
        subjects_per_class: args.subjects_per_class,
        ..ToyWorldConfig::default()
    })?;
    let data = write_toy_data(&world, &args.out, args.samples, args.novel_scenes)?;
    println!(
        "wrote {}: {} subjects ({} reference images) in {}, {} pre-training samples previewed in {}",
        args.out.display(),
        world.subjects().len(),
        data.reference_images,
        data.dreambench.display(),
        data.samples,
        data.page.display()
    );
    if let Some(dir) = &data.novel_scenes {
        println!(
            "{} renders of each subject in novel scenes in {}",
            args.novel_scenes,
            dir.display()
        );
    }
    Ok(())
}
