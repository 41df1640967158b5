//! [`PerStage`]: one value for each of the five stages, indexed by
//! [`Stage`] rather than by a number.

use std::ops::{Index, IndexMut};

use m3u_proxy_plugin_abi::Stage;

/// One `T` per pipeline stage, in pipeline order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerStage<T>([T; 5]);

impl<T> PerStage<T> {
    /// Builds each stage's value with `make`.
    pub fn from_fn(mut make: impl FnMut(Stage) -> T) -> Self {
        PerStage(Stage::ALL.map(&mut make))
    }

    /// Each stage with its value, in pipeline order.
    pub fn iter(&self) -> impl Iterator<Item = (Stage, &T)> {
        Stage::ALL.into_iter().zip(self.0.iter())
    }

    /// The values, in pipeline order.
    pub fn into_values(self) -> impl Iterator<Item = T> {
        self.0.into_iter()
    }
}

impl<T> Index<Stage> for PerStage<T> {
    type Output = T;

    fn index(&self, stage: Stage) -> &T {
        &self.0[stage.as_u32() as usize]
    }
}

impl<T> IndexMut<Stage> for PerStage<T> {
    fn index_mut(&mut self, stage: Stage) -> &mut T {
        &mut self.0[stage.as_u32() as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_their_stage() {
        let mut names = PerStage::from_fn(|stage| stage.name().to_string());
        assert_eq!(names[Stage::Filtering], "filtering");
        names[Stage::M3uGeneration].push('!');
        let order: Vec<(Stage, String)> = names.iter().map(|(s, n)| (s, n.clone())).collect();
        assert_eq!(
            order[4],
            (Stage::M3uGeneration, "m3u_generation!".to_string())
        );
        assert_eq!(order[0].0, Stage::SourceLoading);
        assert_eq!(names.into_values().count(), 5);
    }
}
