//! `trainer discriminate`: P(real) of image folders under a run's discriminator heads.

use anyhow::Result;

use crate::cli::DiscriminateArgs;

pub fn run(args: &DiscriminateArgs) -> Result<()> {
    let probe =
        trainer::fit::discriminator_probe::probe(&args.run, &args.images, args.device.as_deref())?;
    println!(
        "P(real) under the discriminator heads of {} (iteration {}), mean ± SE over each folder's images:\n",
        args.run.display(),
        probe.iteration
    );
    print!("{}", probe.markdown());
    if let Some(csv) = &args.csv {
        trainer::checkpoint::write_text_atomic(csv, &probe.csv())?;
        println!("\nwrote {}", csv.display());
    }
    Ok(())
}
