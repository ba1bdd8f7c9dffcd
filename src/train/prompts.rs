//! Training prompts: the category hold-out of the open-set protocol, and the prompt variety of the recipe's
//! `prompts` section (paraphrase templates, synonyms, prompts naming several categories at once).
//!
//! Hold-out: a held-out category (a prompt name such as `construction vehicle`) never reaches training. Its boxes
//! are removed from every view ([`apply_holdout`]: they are no target of any prompt), its positive prompts are
//! removed, and the negatives are drawn from [`training_vocabulary`], which leaves out every name that
//! [`mentions`] a held-out one (holding out `bicycle` also removes the `bicycle rack` negative). A view whose only
//! boxes were held out keeps its negative prompts. The recipe's templates and synonyms may not mention a
//! held-out name either ([`PromptConfig::validate`]).
//!
//! Variety ([`choose`]): per training item, with the trainer's seeded RNG, one template of the pool (the paper's
//! [`PAPER_PROMPT`] and the recipe's `templates`), one word per named category (the prompt name or one of its
//! `synonyms`), and with probability `multi_category` up to `max_categories` categories of the same view named at
//! once ("Please detect the car and the bus …"), whose target boxes are the union of theirs. With the defaults
//! the text is exactly the paper's prompt, as at evaluation.
use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{default_vocabulary, prompt_name, Example, Prompt};
use crate::perception::prompt::PAPER_PROMPT;
use crate::{Error, Result};

/// The recipe's `prompts` section; every key optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Paraphrases of the paper's template, each with one `{category}`; the paper's template is always in the
    /// pool as well (evaluation uses it).
    pub templates: Vec<String>,
    /// Prompt name → other words for it (`car: [automobile, sedan]`); the prompt name itself stays one choice.
    pub synonyms: BTreeMap<String, Vec<String>>,
    /// Probability that a training prompt names several categories of its view at once.
    pub multi_category: f64,
    /// Most categories one multi-category prompt names (≥ 2).
    pub max_categories: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            templates: Vec::new(),
            synonyms: BTreeMap::new(),
            multi_category: 0.0,
            max_categories: 2,
        }
    }
}

impl PromptConfig {
    /// Whether it is the default (the paper's prompt only).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The template pool: the paper's first, then the recipe's.
    pub fn pool(&self) -> Vec<&str> {
        std::iter::once(PAPER_PROMPT)
            .chain(self.templates.iter().map(String::as_str))
            .collect()
    }

    /// Checks the values against the held-out names; the error names the key (`prompts.templates[1]`, …).
    pub fn validate(&self, holdout: &[String]) -> Result<()> {
        let bad =
            |key: String, why: String| Error::invalid(format!("training config key `{key}`"), why);
        for (i, t) in self.templates.iter().enumerate() {
            let key = format!("prompts.templates[{i}]");
            if t.matches("{category}").count() != 1 {
                return Err(bad(key, format!("{t:?} needs exactly one {{category}}")));
            }
            if let Some(h) = holdout.iter().find(|h| mentions(t, h)) {
                return Err(bad(key, format!("{t:?} names the held-out category {h:?}")));
            }
        }
        let vocabulary = default_vocabulary();
        for (name, words) in &self.synonyms {
            let key = format!("prompts.synonyms.{name}");
            if !vocabulary.contains(name) {
                return Err(bad(
                    key,
                    format!("{name:?} is not a prompt name (one of {vocabulary:?})"),
                ));
            }
            for w in words {
                if w.trim().is_empty() || w.contains('{') {
                    return Err(bad(key, format!("{w:?} is not a word")));
                }
                if let Some(h) = holdout.iter().find(|h| mentions(w, h)) {
                    return Err(bad(key, format!("{w:?} names the held-out category {h:?}")));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.multi_category) {
            return Err(bad(
                "prompts.multi_category".into(),
                format!("{} (a probability, 0..1)", self.multi_category),
            ));
        }
        if self.max_categories < 2 {
            return Err(bad(
                "prompts.max_categories".into(),
                format!("{} (must be at least 2)", self.max_categories),
            ));
        }
        Ok(())
    }
}

/// A held-out or `--holdout` name as a prompt name: nuScenes names (`vehicle.trailer`) map through
/// [`prompt_name`]; the result must be one of [`default_vocabulary`]. `key` names the setting in errors.
pub fn normalize_categories(names: &[String], key: &str) -> Result<Vec<String>> {
    let vocabulary = default_vocabulary();
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let t = n.trim();
        let p = if t.contains('.') {
            prompt_name(t)
        } else {
            t.to_lowercase()
        };
        if !vocabulary.contains(&p) {
            return Err(Error::invalid(
                key.to_string(),
                format!("{n:?} is not a category (prompt names: {vocabulary:?})"),
            ));
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether `text` names `name` as a whole phrase (case-insensitive; `bicycle rack` mentions `bicycle`,
/// `motorcycle` and `cars` do not).
pub fn mentions(text: &str, name: &str) -> bool {
    let (text, name) = (text.to_lowercase(), name.trim().to_lowercase());
    if name.is_empty() {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(&name).any(|(i, _)| {
        !word(text[..i].chars().next_back()) && !word(text[i + name.len()..].chars().next())
    })
}

/// The negative-prompt vocabulary of a run holding out `holdout`: [`default_vocabulary`] without any name that
/// mentions a held-out one.
pub fn training_vocabulary(holdout: &[String]) -> Vec<String> {
    default_vocabulary()
        .into_iter()
        .filter(|n| !holdout.iter().any(|h| mentions(n, h)))
        .collect()
}

/// Removes the held-out categories from a view: their boxes (the remaining prompts' box indices renumbered)
/// and every prompt that mentions one. Returns how many boxes were removed.
pub fn apply_holdout(view: &mut Example, holdout: &[String]) -> usize {
    if holdout.is_empty() {
        return 0;
    }
    let held = |category: &str| holdout.contains(&prompt_name(category));
    let mut new_index = Vec::with_capacity(view.boxes.len());
    let mut kept = 0;
    for b in &view.boxes {
        if held(&b.category) {
            new_index.push(None);
        } else {
            new_index.push(Some(kept));
            kept += 1;
        }
    }
    let removed = view.boxes.len() - kept;
    view.boxes.retain(|b| !held(&b.category));
    view.prompts.retain(|p| {
        !holdout
            .iter()
            .any(|h| mentions(&p.category, h) || mentions(&p.text, h))
    });
    for p in &mut view.prompts {
        p.boxes = p.boxes.iter().filter_map(|&b| new_index[b]).collect();
    }
    removed
}

/// `car`, `car and the bus`, `car, the bus and the truck`: several names for one `{category}`.
pub fn join_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and the {last}", init.join(", the ")),
    }
}

/// A training prompt as the trainer feeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptChoice {
    /// The text.
    pub text: String,
    /// The categories (prompt names) it asks for.
    pub categories: Vec<String>,
    /// The words it uses for them (prompt names or synonyms), in the same order.
    pub words: Vec<String>,
    /// Indices into the view's boxes of the boxes answering it (the union over its categories), sorted.
    pub boxes: Vec<usize>,
}

/// The prompt of training item `prompt` of a view whose prompts are `prompts`, drawn with `rng` (see the module
/// notes).
pub fn choose(
    cfg: &PromptConfig,
    prompts: &[Prompt],
    prompt: usize,
    rng: &mut impl Rng,
) -> PromptChoice {
    let pool = cfg.pool();
    let template = pool[rng.random_range(0..pool.len())];
    let multi: f64 = rng.random();
    let mut chosen = vec![prompt];
    if multi < cfg.multi_category && prompts.len() > 1 {
        let mut others: Vec<usize> = (0..prompts.len()).filter(|&i| i != prompt).collect();
        others.shuffle(rng);
        let most = cfg.max_categories.min(prompts.len());
        let n = rng.random_range(2..=most);
        chosen.extend(others.into_iter().take(n - 1));
    }
    let categories: Vec<String> = chosen
        .iter()
        .map(|&i| prompts[i].category.clone())
        .collect();
    let words: Vec<String> = categories
        .iter()
        .map(|c| match cfg.synonyms.get(c) {
            Some(s) if !s.is_empty() => {
                let k = rng.random_range(0..=s.len());
                if k == 0 {
                    c.clone()
                } else {
                    s[k - 1].clone()
                }
            }
            _ => c.clone(),
        })
        .collect();
    let mut boxes: Vec<usize> = chosen
        .iter()
        .flat_map(|&i| prompts[i].boxes.iter().copied())
        .collect();
    boxes.sort_unstable();
    boxes.dedup();
    PromptChoice {
        text: template.replace("{category}", &join_names(&words)),
        categories,
        words,
        boxes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::LabeledBox;
    use crate::geometry::{Frame, OrientedBox3D, PinholeCamera};
    use crate::perception::prompt::paper_prompt;
    use rand::SeedableRng;

    fn prompt(category: &str, boxes: &[usize]) -> Prompt {
        Prompt {
            category: category.into(),
            text: paper_prompt(category),
            boxes: boxes.to_vec(),
        }
    }

    fn view(categories: &[&str], prompts: Vec<Prompt>) -> Example {
        Example {
            scene_token: "s".into(),
            scene_name: "scene-0001".into(),
            sample_token: "t".into(),
            channel: "CAM_FRONT".into(),
            stamp_ns: 0,
            image_jpeg: Vec::new(),
            camera: PinholeCamera::from_rows(
                [[10.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]],
                10,
                10,
            )
            .unwrap(),
            cam_to_lidar: Default::default(),
            lidar_to_global: Default::default(),
            frame: Frame::Camera,
            boxes: categories
                .iter()
                .enumerate()
                .map(|(i, c)| LabeledBox {
                    oriented: OrientedBox3D::from_camera_params([
                        0.0, 0.0, 5.0, 1.0, 1.0, 1.0, 0.0,
                    ])
                    .unwrap(),
                    category: c.to_string(),
                    instance_id: format!("i{i}"),
                })
                .collect(),
            prompts,
        }
    }

    #[test]
    fn names_are_matched_as_phrases() {
        assert!(mentions(
            "Please detect the bicycle rack in the image",
            "bicycle"
        ));
        assert!(mentions("TRAILER", "trailer"));
        assert!(!mentions("motorcycle", "bicycle"));
        assert!(!mentions("the cars", "car"));
        assert!(mentions("car, the bus", "car"));
        assert!(!mentions("construction worker", "construction vehicle"));
        let v = training_vocabulary(&["bicycle".into(), "trailer".into()]);
        assert!(!v
            .iter()
            .any(|n| n == "bicycle" || n == "bicycle rack" || n == "trailer"));
        assert_eq!(v.len(), default_vocabulary().len() - 3);
        assert_eq!(
            normalize_categories(&["vehicle.construction".into(), "Trailer".into()], "k").unwrap(),
            ["construction vehicle", "trailer"]
        );
        // nuScenes' long names map to the plain words the prompts use.
        for (long, plain) in [
            ("vehicle.construction", "construction vehicle"),
            ("vehicle.trailer", "trailer"),
            ("movable_object.barrier", "barrier"),
            ("vehicle.bicycle", "bicycle"),
            ("movable_object.trafficcone", "traffic cone"),
        ] {
            assert_eq!(prompt_name(long), plain);
        }
        let e = normalize_categories(&["trialer".into()], "--holdout").unwrap_err();
        assert!(
            e.to_string().contains("--holdout") && e.to_string().contains("trialer"),
            "{e}"
        );
    }

    #[test]
    fn holdout_removes_boxes_and_prompts_and_renumbers() {
        let mut v = view(
            &[
                "vehicle.car",
                "vehicle.trailer",
                "vehicle.car",
                "movable_object.barrier",
            ],
            vec![
                prompt("barrier", &[3]),
                prompt("car", &[0, 2]),
                prompt("trailer", &[1]),
                prompt("bicycle rack", &[]),
                prompt("bus", &[]),
            ],
        );
        let removed = apply_holdout(&mut v, &["trailer".into(), "bicycle".into()]);
        assert_eq!(removed, 1);
        assert_eq!(v.boxes.len(), 3);
        let cats: Vec<&str> = v.prompts.iter().map(|p| p.category.as_str()).collect();
        assert_eq!(cats, ["barrier", "car", "bus"]);
        assert_eq!(v.prompts[0].boxes, [2]);
        assert_eq!(v.prompts[1].boxes, [0, 1]);
        for p in &v.prompts {
            for &b in &p.boxes {
                assert_eq!(prompt_name(&v.boxes[b].category), p.category);
            }
        }
        // A view whose only boxes are held out keeps its negatives.
        let mut v = view(
            &["vehicle.trailer"],
            vec![prompt("trailer", &[0]), prompt("car", &[])],
        );
        apply_holdout(&mut v, &["trailer".into()]);
        assert!(v.boxes.is_empty());
        assert_eq!(v.prompts, vec![prompt("car", &[])]);
    }

    #[test]
    fn defaults_give_the_papers_prompt() {
        let prompts = vec![prompt("car", &[0]), prompt("bus", &[])];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for i in 0..2 {
            let c = choose(&PromptConfig::default(), &prompts, i, &mut rng);
            assert_eq!(c.text, prompts[i].text);
            assert_eq!(c.categories, [prompts[i].category.clone()]);
            assert_eq!(c.boxes, prompts[i].boxes);
        }
    }

    #[test]
    fn templates_synonyms_and_multi_category_prompts() {
        let cfg = PromptConfig {
            templates: vec!["Find every {category} and give its 3D box.".into()],
            synonyms: [("car".to_string(), vec!["automobile".to_string()])].into(),
            multi_category: 0.5,
            max_categories: 3,
        };
        cfg.validate(&[]).unwrap();
        let prompts = vec![
            prompt("car", &[0, 2]),
            prompt("bus", &[1]),
            prompt("truck", &[]),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut paper, mut other, mut synonym, mut multi, mut three) = (0, 0, 0, 0, 0);
        for k in 0..600 {
            let c = choose(&cfg, &prompts, k % 3, &mut rng);
            assert_eq!(c.categories[0], prompts[k % 3].category);
            assert_eq!(c.categories.len(), c.words.len());
            if c.text.starts_with("Please detect the ") {
                paper += 1;
            } else {
                assert!(c.text.starts_with("Find every "), "{}", c.text);
                other += 1;
            }
            for (cat, w) in c.categories.iter().zip(&c.words) {
                assert!(c.text.contains(w.as_str()), "{} lacks {w}", c.text);
                if cat == "car" {
                    assert!(w == "car" || w == "automobile");
                } else {
                    assert_eq!(w, cat);
                }
            }
            synonym += c.words.iter().filter(|w| *w == "automobile").count();
            // The targets are the union of the named categories' boxes.
            let mut want: Vec<usize> = c
                .categories
                .iter()
                .flat_map(|n| {
                    prompts
                        .iter()
                        .find(|p| &p.category == n)
                        .unwrap()
                        .boxes
                        .clone()
                })
                .collect();
            want.sort_unstable();
            assert_eq!(c.boxes, want);
            if c.categories.len() > 1 {
                multi += 1;
                let mut u = c.categories.clone();
                u.sort();
                u.dedup();
                assert_eq!(u.len(), c.categories.len(), "a category named twice");
                assert!(c.text.contains(" and the "), "{}", c.text);
            }
            three += usize::from(c.categories.len() == 3);
        }
        assert!(paper > 200 && other > 200, "{paper} {other}");
        assert!(synonym > 50, "{synonym}");
        assert!((200..400).contains(&multi) && three > 50, "{multi} {three}");
        assert_eq!(
            join_names(&["car".into(), "bus".into(), "truck".into()]),
            "car, the bus and the truck"
        );
        assert_eq!(
            PAPER_PROMPT.replace("{category}", &join_names(&["car".into(), "bus".into()])),
            "Please detect the car and the bus in the image and output 3D box center (x, y, z), size (length, \
             width, height), yaw in radians."
        );
        // The same seed draws the same prompts.
        let draw = || -> Vec<_> {
            (0..20)
                .map(|k| {
                    choose(
                        &cfg,
                        &prompts,
                        k % 3,
                        &mut rand_chacha::ChaCha8Rng::seed_from_u64(k as u64),
                    )
                })
                .collect()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn bad_prompt_settings_name_the_key() {
        let holdout = vec!["trailer".to_string()];
        let cases = [
            (
                PromptConfig {
                    templates: vec!["no placeholder".into()],
                    ..Default::default()
                },
                "prompts.templates[0]",
            ),
            (
                PromptConfig {
                    templates: vec!["Detect the {category} next to the trailer.".into()],
                    ..Default::default()
                },
                "prompts.templates[0]",
            ),
            (
                PromptConfig {
                    synonyms: [("truck".to_string(), vec!["semi trailer".to_string()])].into(),
                    ..Default::default()
                },
                "prompts.synonyms.truck",
            ),
            (
                PromptConfig {
                    synonyms: [("lorry".to_string(), vec!["truck".to_string()])].into(),
                    ..Default::default()
                },
                "prompts.synonyms.lorry",
            ),
            (
                PromptConfig {
                    multi_category: 1.5,
                    ..Default::default()
                },
                "prompts.multi_category",
            ),
            (
                PromptConfig {
                    max_categories: 1,
                    ..Default::default()
                },
                "prompts.max_categories",
            ),
        ];
        for (cfg, key) in cases {
            let e = cfg.validate(&holdout).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
