//! The dependency graph of a set of packs: an order that installs every pack after its
//! dependencies, and the cycles that prevent one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// A closed path of dependencies: each ref depends on the next, and the first ref is
/// repeated at the end (`["a", "b", "a"]`: a depends on b, b on a). Attune registers
/// packs in dependency order, so a cycle cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", .0.join(" -> "))]
pub struct Cycle(pub Vec<String>);

/// Packs and what each depends on. Packs are numbered in ref order, so "the lowest
/// ref" is the lowest number and every answer is the same whatever order the packs
/// came in.
#[derive(Debug)]
pub struct Graph<'a> {
    refs: Vec<&'a str>,
    /// `dependencies[a]`: the packs `a` depends on, in the order declared, each once.
    dependencies: Vec<Vec<usize>>,
    /// `dependents[a]`: the packs that depend on `a`, in ref order.
    dependents: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    /// `packs`: each pack's ref and the refs it depends on. Dependencies on packs that
    /// are not in `packs` are left out.
    pub fn new<S: AsRef<str>>(packs: &'a BTreeMap<S, Vec<S>>) -> Self {
        let refs: Vec<&str> = packs.keys().map(|k| k.as_ref()).collect();
        let number: HashMap<&str, usize> = refs.iter().enumerate().map(|(i, r)| (*r, i)).collect();
        let mut dependents = vec![Vec::new(); refs.len()];
        let dependencies = packs
            .values()
            .enumerate()
            .map(|(pack, deps)| {
                let mut seen = HashSet::new();
                let mut out = Vec::with_capacity(deps.len());
                for dep in deps.iter().filter_map(|d| number.get(d.as_ref()).copied()) {
                    if seen.insert(dep) {
                        out.push(dep);
                        // `pack` grows, so each list stays in ref order.
                        dependents[dep].push(pack);
                    }
                }
                out
            })
            .collect();
        Self {
            refs,
            dependencies,
            dependents,
        }
    }

    pub fn pack_ref(&self, pack: usize) -> &'a str {
        self.refs[pack]
    }

    /// The packs that depend on `pack`, in ref order.
    pub fn dependents(&self, pack: usize) -> &[usize] {
        &self.dependents[pack]
    }

    /// Every pack after all of its dependencies; when several could come next, the
    /// lowest ref goes first (Kahn's algorithm).
    ///
    /// When packs depend on each other, the error is one cycle among them: from the
    /// lowest pack left, follow its lowest dependency left until a ref repeats; the
    /// path starts at its lowest ref. A pack that depends on itself is a cycle too.
    pub fn dependency_order(&self) -> Result<Vec<usize>, Cycle> {
        let n = self.refs.len();
        let mut waiting_for: Vec<usize> = self.dependencies.iter().map(Vec::len).collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|p| waiting_for[*p] == 0).collect();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while let Some(pack) = ready.pop_first() {
            placed[pack] = true;
            order.push(pack);
            for &user in &self.dependents[pack] {
                waiting_for[user] -= 1;
                if waiting_for[user] == 0 {
                    ready.insert(user);
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Every pack left still has a dependency left, so the walk cannot stop.
        let mut path: Vec<usize> = Vec::new();
        let mut current = (0..n).find(|p| !placed[*p]).expect("a pack is left");
        while !path.contains(&current) {
            path.push(current);
            current = self.dependencies[current]
                .iter()
                .copied()
                .filter(|d| !placed[*d])
                .min()
                .expect("a pack left has a dependency left");
        }
        let start = path
            .iter()
            .position(|p| *p == current)
            .expect("the repeated pack is on the path");
        let mut cycle = path.split_off(start);
        let lowest = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| **p)
            .map_or(0, |(i, _)| i);
        cycle.rotate_left(lowest);
        cycle.push(cycle[0]);
        Err(self.cycle(&cycle))
    }

    /// The strongly connected components, each in ref order: packs that depend on each
    /// other, directly or not, share one (Tarjan's algorithm, iterative so that a long
    /// dependency chain does not overflow the stack).
    pub fn strongly_connected(&self) -> Vec<Vec<usize>> {
        let n = self.refs.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut next = 0;
        let mut out = Vec::new();
        for start in 0..n {
            if index[start] != usize::MAX {
                continue;
            }
            // (pack, next dependency to look at)
            let mut work = vec![(start, 0usize)];
            while let Some(&mut (v, ref mut edge)) = work.last_mut() {
                if *edge == 0 && index[v] == usize::MAX {
                    index[v] = next;
                    low[v] = next;
                    next += 1;
                    stack.push(v);
                    on_stack[v] = true;
                }
                if let Some(&w) = self.dependencies[v].get(*edge) {
                    *edge += 1;
                    if index[w] == usize::MAX {
                        work.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    component.sort_unstable();
                    out.push(component);
                }
            }
        }
        out
    }

    /// A shortest cycle from `start` back to itself through the packs of `component`
    /// (a strongly connected component that holds `start`).
    pub fn cycle_through(&self, component: &[usize], start: usize) -> Cycle {
        let members: HashSet<usize> = component.iter().copied().collect();
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(pack) = queue.pop_front() {
            for &next in &self.dependencies[pack] {
                if next == start {
                    let mut back = vec![pack];
                    let mut at = pack;
                    while at != start {
                        at = parent[&at];
                        back.push(at);
                    }
                    back.pop();
                    back.reverse();
                    let mut path = vec![start];
                    path.extend(back);
                    path.push(start);
                    return self.cycle(&path);
                }
                if members.contains(&next) && !parent.contains_key(&next) {
                    parent.insert(next, pack);
                    queue.push_back(next);
                }
            }
        }
        self.cycle(component)
    }

    fn cycle(&self, path: &[usize]) -> Cycle {
        Cycle(path.iter().map(|p| self.refs[*p].to_string()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(
        list: &[(&'static str, &[&'static str])],
    ) -> BTreeMap<&'static str, Vec<&'static str>> {
        list.iter().map(|(n, ds)| (*n, ds.to_vec())).collect()
    }

    fn refs(graph: &Graph, packs: &[usize]) -> Vec<String> {
        packs
            .iter()
            .map(|p| graph.pack_ref(*p).to_string())
            .collect()
    }

    #[test]
    fn finds_cycles_and_a_path_through_them() {
        let packs = edges(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a", "d"]),
            ("d", &[]),
            ("e", &["e2"]),
            ("e2", &[]),
        ]);
        let graph = Graph::new(&packs);
        let components: Vec<_> = graph
            .strongly_connected()
            .into_iter()
            .filter(|s| s.len() > 1)
            .collect();
        assert_eq!(components.len(), 1);
        assert_eq!(refs(&graph, &components[0]), ["a", "b", "c"]);
        assert_eq!(
            graph.cycle_through(&components[0], 1).to_string(),
            "dependency cycle: b -> c -> a -> b"
        );
    }

    #[test]
    fn long_chains_do_not_overflow() {
        let names: Vec<String> = (0..100_000).map(|i| format!("p{i}")).collect();
        let mut packs = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            packs.insert(n.clone(), names.get(i + 1).cloned().into_iter().collect());
        }
        let graph = Graph::new(&packs);
        assert!(graph.strongly_connected().iter().all(|s| s.len() == 1));
        assert_eq!(graph.dependency_order().unwrap().len(), names.len());
    }

    #[test]
    fn order_puts_dependencies_first_and_ties_by_ref() {
        let packs = edges(&[
            ("app", &["lib", "base"]),
            ("lib", &["base"]),
            ("base", &[]),
            ("tool", &[]),
        ]);
        let graph = Graph::new(&packs);
        let order = graph.dependency_order().unwrap();
        assert_eq!(refs(&graph, &order), ["base", "lib", "app", "tool"]);
        assert_eq!(refs(&graph, graph.dependents(1)), ["app", "lib"]);
    }

    #[test]
    fn a_blocking_cycle_starts_at_its_lowest_ref() {
        let packs = edges(&[("app", &["d"]), ("b", &["c"]), ("c", &["d"]), ("d", &["b"])]);
        let cycle = Graph::new(&packs).dependency_order().unwrap_err();
        assert_eq!(
            cycle,
            Cycle(vec!["b".into(), "c".into(), "d".into(), "b".into()])
        );

        let packs = edges(&[("selfish", &["selfish"])]);
        let cycle = Graph::new(&packs).dependency_order().unwrap_err();
        assert_eq!(cycle.to_string(), "dependency cycle: selfish -> selfish");
    }
}
