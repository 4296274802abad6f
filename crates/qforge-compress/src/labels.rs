//! Training labels of one window (QwenLong-CPRS, arXiv 2505.18092): BIOE classes for the BIOE head and tag-word
//! ids for the critic, from the gold facts' character ranges; prefix positions carry no loss
//! (our choice where the release is silent), and a seeded share of outside positions is dropped
//! from both losses (the paper's 50% gradient masking of non-critical tokens).

use qforge_util::SplitMix;

use crate::loss::IGNORE;
use crate::postprocess::Tag;
use crate::windows::Window;

/// Vocabulary ids the critic predicts: the first token of the sample's tag word (as
/// `build_tag_from_data` upstream) inside facts, the first token of `outside` elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriticIds {
    pub tag: u32,
    pub outside: u32,
}

/// Labels of `prefix + window` (row-major over the positions).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLabels {
    pub bio: Vec<i64>,
    pub lm: Vec<i64>,
}

/// The class of each context token: tokens overlapping a fact's character range `[start, end)`
/// are B (first), I, E (last); a one-token fact is B; the rest O.
pub fn bioe_tags(offsets: &[(usize, usize)], facts: &[[usize; 2]]) -> Vec<Tag> {
    let mut tags = vec![Tag::O; offsets.len()];
    for &[start, end] in facts {
        let inside: Vec<usize> = offsets
            .iter()
            .enumerate()
            .filter(|&(_, &(s, e))| s < end && e > start)
            .map(|(i, _)| i)
            .collect();
        let (Some(&first), Some(&last)) = (inside.first(), inside.last()) else {
            continue;
        };
        tags[first..=last].fill(Tag::I);
        tags[first] = Tag::B;
        if last > first {
            tags[last] = Tag::E;
        }
    }
    tags
}

fn class(tag: Tag) -> i64 {
    match tag {
        Tag::B => 0,
        Tag::I => 1,
        Tag::O => 2,
        Tag::E => 3,
    }
}

/// The labels of one window whose context tokens follow `prefix_len` prefix tokens.
pub fn window_labels(
    prefix_len: usize,
    window: &Window,
    facts: &[[usize; 2]],
    critic: CriticIds,
) -> WindowLabels {
    let tags = bioe_tags(&window.offsets, facts);
    let mut bio = vec![IGNORE; prefix_len];
    let mut lm = vec![IGNORE; prefix_len];
    for t in tags {
        bio.push(class(t));
        lm.push(i64::from(if t == Tag::O {
            critic.outside
        } else {
            critic.tag
        }));
    }
    WindowLabels { bio, lm }
}

/// Drops each outside position from both losses with probability `rate`.
pub fn drop_outside(labels: &mut WindowLabels, rate: f64, rng: &mut SplitMix) {
    if rate <= 0.0 {
        return;
    }
    let outside = class(Tag::O);
    for (b, l) in labels.bio.iter_mut().zip(labels.lm.iter_mut()) {
        if *b == outside && rng.unit() < rate {
            *b = IGNORE;
            *l = IGNORE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_become_bioe_runs_and_one_token_facts_are_b() {
        let offsets = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12), (12, 14)];
        let tags = bioe_tags(&offsets, &[[3, 9], [12, 13]]);
        use Tag::*;
        assert_eq!(tags, vec![O, B, I, E, O, B]);
    }

    #[test]
    fn dropping_outside_is_seeded_and_leaves_facts_alone() {
        let mut labels = WindowLabels {
            bio: [0, 1, 3].into_iter().chain(vec![2; 997]).collect(),
            lm: vec![7; 1000],
        };
        let mut again = labels.clone();
        drop_outside(&mut labels, 0.5, &mut SplitMix(3));
        drop_outside(&mut again, 0.5, &mut SplitMix(3));
        assert_eq!(labels, again);
        assert_eq!(&labels.bio[..3], &[0, 1, 3]);
        let dropped = labels.bio.iter().filter(|&&b| b == IGNORE).count();
        assert!((420..580).contains(&dropped), "{dropped} of 997 dropped");
        assert!(
            labels
                .bio
                .iter()
                .zip(&labels.lm)
                .all(|(b, l)| (*b == IGNORE) == (*l == IGNORE))
        );
    }
}
