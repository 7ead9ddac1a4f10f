//! Train SCH on a bundle, encode its query and database items, search and evaluate.
//!
//! ```sh
//! cargo run --release --example train_sch_and_search -- data/wiki 32 runs/wiki-sch-model
//! ```
//!
//! Arguments: the bundle folder, the code length (default 32) and, optionally, a folder to save
//! the model in (the `encode_with_saved_model` example reads it back).

use anyhow::Result;
use cmh::bundle::Bundle;
use cmh::method::{Fit, FitContext, HashModel, IMAGE, TEXT};
use cmh::metrics::{evaluate, EvalOptions};
use cmh::shallow::sch::SchParams;
use cmh::split::{bundle_views, eval_labels, make_split, SplitConfig};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(args.next().unwrap_or_else(|| "data/wiki".into()));
    let bits: usize = args.next().map_or(Ok(32), |b| b.parse())?;
    let save_to = args.next().map(PathBuf::from);

    // A bundle is a folder of .npy files with a bundle.json manifest; loading validates it.
    let bundle = Bundle::load(&data)?;
    // The standard protocol: the bundle's fixed split (or a seeded random one).
    let split = make_split(&bundle, &SplitConfig::default())?;
    let train = split.train_set(&bundle, false)?;
    println!("{}: {} training, {} query, {} database items", bundle.manifest.name, train.len(), split.query.len(), split.database.len());

    // Hyper-parameters are a plain struct with the paper's defaults; `fit` checks them first.
    // Anchors are drawn from the training items, so small bundles need fewer than the default.
    let params = SchParams { anchors: SchParams::default().anchors.min(train.len()), ..Default::default() };
    let model = params.fit(&train, &FitContext::new(bits, 0))?;

    // Encode text queries and the image database with the learned hash functions.
    let queries = bundle_views(&bundle, &split.query, false)?;
    let database = bundle_views(&bundle, &split.database, false)?;
    let q = model.encode(TEXT, &queries[TEXT])?;
    let db = model.encode(IMAGE, &database[IMAGE])?;

    // Hamming search: the 5 nearest images of the first text query, by (distance, index).
    let hits = cmh::search::topk(q.view(), db.view(), 5)?;
    let names = bundle.class_names();
    let label = |item: usize| {
        let row = bundle.labels[0].row(item);
        names.iter().zip(row).filter(|(_, &v)| v != 0).map(|(n, _)| n.as_str()).collect::<Vec<_>>().join("+")
    };
    println!("text query {} ({}):", split.query[0], label(split.query[0]));
    for (&j, &d) in hits.indices.row(0).iter().zip(hits.distances.row(0)) {
        let item = split.database[j as usize];
        println!("  image {item:5} at distance {d:2} ({})", label(item));
    }

    // Text -> image mAP and mAP@100 with the conventions of `cmh eval`.
    let (ql, dl) = (eval_labels(&bundle, &split.query), eval_labels(&bundle, &split.database));
    let m = evaluate(q.view(), db.view(), ql.view(), dl.view(), &EvalOptions { topk: Some(100), ..Default::default() })?;
    println!("text->image over {} queries: mAP {:.4}, mAP@100 {:.4}", m.n_queries - m.excluded_queries, m.map, m.map_at_k.unwrap_or(0.0));

    if let Some(dir) = save_to {
        model.save(&dir)?;
        println!("model saved in {}", dir.display());
    }
    Ok(())
}
