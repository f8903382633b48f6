//! Traffic splits as HAProxy server weights, and back.

use deploy_core::{BackendError, Pool, TrafficSplit, Weight};

use super::{Server, pools_in_rotation};

/// HAProxy's largest server weight.
const MAX_WEIGHT: u64 = 256;
const TOTAL_BP: u64 = 10_000;

/// The weight each server should have for `target`: a pool's share divided evenly among its
/// servers in rotation, scaled so the largest per-server share is [`MAX_WEIGHT`]; a server
/// of a pool with a share never gets 0. Servers out of rotation keep their weight (it does
/// not route while they drain or sit in maintenance).
pub(super) fn assign<'a>(target: &TrafficSplit, servers: &'a [Server]) -> Vec<(&'a Server, u32)> {
    let pools = pools_in_rotation(servers);
    // Per-server share of each pool in basis points, scaled by the product of member counts
    // would overflow nothing here: compare as share / members with cross-multiplication.
    let largest = pools
        .iter()
        .map(|(pool, members)| (u64::from(target.weight_of(pool).basis_points()), *members as u64))
        .filter(|(share, _)| *share > 0)
        .max_by(|(a, m), (b, n)| (a * n).cmp(&(b * m)));
    servers
        .iter()
        .filter(|s| s.in_rotation())
        .map(|server| {
            let share = u64::from(target.weight_of(&server.pool).basis_points());
            let members = pools.get(&server.pool).copied().unwrap_or(1) as u64;
            let weight = match largest {
                Some((top_share, top_members)) if share > 0 => {
                    // MAX * (share / members) / (top_share / top_members), rounded.
                    let numerator = MAX_WEIGHT * share * top_members;
                    let denominator = members * top_share;
                    ((numerator + denominator / 2) / denominator).clamp(1, MAX_WEIGHT)
                }
                _ => 0,
            };
            (server, weight as u32)
        })
        .collect()
}

/// The split the weights of the servers in rotation give, in basis points (largest
/// remainder), or `None` when nothing carries weight.
pub(super) fn observed_split(servers: &[Server]) -> Result<Option<TrafficSplit>, BackendError> {
    let mut per_pool: Vec<(&Pool, u64)> = Vec::new();
    for server in servers.iter().filter(|s| s.in_rotation() && s.row.weight > 0) {
        match per_pool.iter_mut().find(|(pool, _)| *pool == &server.pool) {
            Some((_, weight)) => *weight += u64::from(server.row.weight),
            None => per_pool.push((&server.pool, u64::from(server.row.weight))),
        }
    }
    let total: u64 = per_pool.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return Ok(None);
    }
    let mut shares: Vec<(&Pool, u64, u64)> = per_pool
        .iter()
        .map(|(pool, weight)| (*pool, weight * TOTAL_BP / total, weight * TOTAL_BP % total))
        .collect();
    let mut left = TOTAL_BP - shares.iter().map(|(_, bp, _)| bp).sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by(|a, b| shares[*b].2.cmp(&shares[*a].2));
    for at in by_remainder {
        if left == 0 {
            break;
        }
        shares[at].1 += 1;
        left -= 1;
    }
    let weights = shares
        .into_iter()
        .map(|(pool, bp, _)| Ok((pool.clone(), Weight::from_basis_points(bp as u32)?)))
        .collect::<Result<Vec<_>, BackendError>>()?;
    Ok(Some(TrafficSplit::new(weights)?))
}

#[cfg(test)]
mod tests {
    use deploy_core::InstanceId;

    use super::super::runtime::ServerRow;
    use super::*;

    fn server(pool: &str, id: &str, weight: u32, admin: u32) -> Server {
        Server {
            pool: Pool::new(pool).unwrap(),
            instance: InstanceId::new(id).unwrap(),
            row: ServerRow {
                name: format!("{pool}:{id}"),
                address: "127.0.0.1".into(),
                port: Some(1),
                weight,
                admin,
            },
        }
    }

    fn split(stable: &str, canary: &str, percent: f64) -> TrafficSplit {
        TrafficSplit::canary(
            Pool::new(stable).unwrap(),
            Pool::new(canary).unwrap(),
            Weight::from_percent(percent).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn shares_are_divided_among_members_and_scaled_to_256() {
        let servers = vec![
            server("stable", "a", 0, 0),
            server("stable", "b", 0, 0),
            server("stable", "c", 0, 0),
            server("stable", "d", 0, 0),
            server("canary", "e", 0, 0),
            server("canary", "f", 0, 8), // draining: not in rotation
        ];
        let weights: Vec<u32> = assign(&split("stable", "canary", 10.0), &servers)
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(weights, [256, 256, 256, 256, 114]);
        // 114 / (114 + 1024) = 10.02%.
        let weights: Vec<u32> = assign(&split("stable", "canary", 0.5), &servers)
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(weights, [256, 256, 256, 256, 5]);
        let all: Vec<u32> = assign(&TrafficSplit::all_to(Pool::new("canary").unwrap()), &servers)
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(all, [0, 0, 0, 0, 256]);
    }

    #[test]
    fn the_observed_split_sums_to_the_whole() {
        let servers = vec![
            server("stable", "a", 256, 0),
            server("stable", "b", 256, 0),
            server("canary", "c", 57, 0),
            server("canary", "d", 256, 1), // in maintenance
        ];
        let observed = observed_split(&servers).unwrap().unwrap();
        assert_eq!(observed.total_basis_points(), 10_000);
        assert_eq!(
            observed.weight_of(&Pool::new("canary").unwrap()).basis_points(),
            1002
        );
        assert_eq!(observed_split(&servers[3..]).unwrap(), None);
    }
}
