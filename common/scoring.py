"""Answers that are always real clusters, fast: scoring with a shared-prefix KV cache (pure torch).

Every prompt of a bulk run shares a long prefix (instructions, the cluster list). `PrefixScorer`
runs it once, keeps its keys/values, and for each batch runs only the per-pair suffixes, right
padded, with an explicit 4-D attention mask and position ids so each row sees the prefix and its
own suffix only. Three ways to turn the model into answers (issue 4):

- `verbalize`: the probability of every cluster name under decoding constrained to a prefix tree
  (trie) of the names' token ids, all in ONE forward per batch. Only trie nodes with two or more
  children need a model state; the tokens leading to them are appended once, shared by every row,
  under a tree-shaped mask (each sees the suffix and its own ancestors). A name's log-probability
  is the sum of log-softmaxes over the live children at its branching nodes, i.e. exactly what
  step-by-step constrained decoding assigns it, with no beam pruning.
- `constrained`: step-by-step beam search over the same trie (k beams per row), reusing the cache.
- `generate`: free greedy generation, mapped back to a cluster by exact name match (valid rate).

Excluded clusters (c1, c2 of the row) are masked before normalising, so they never appear and
their probability mass is shared by the others. Runs on CPU or GPU without Ray.

Name logits are the model's own, computed in fp32 from the gathered head rows whatever the model's
dtype (bf16 logits come in steps of 1/8 at magnitude 16-32: exact ties and rank noise), with the
head's bias and the config's logit transform (Granite, Cohere, Gemma-2). Masks are boolean for
SDPA and additive for eager attention (Gemma-2's). At load a probe compares the scorer's logits
with the model's own full forward: a model it would score wrongly (another head transform or
attention scheme) is refused (`ModelError`), never scored silently wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from common.prompts import clean, end_of_turn_id

log = logging.getLogger(__name__)
NEG = -1e9  # finite "minus infinity": keeps matmuls free of nan
PROBE_TOKENS = 8  # suffix tokens of the load-time check that our logits are the model's


@dataclass
class Trie:
    """Prefix tree over name token ids (each name ends with the end token, so no name is a
    prefix of another). Node 0 is the root."""

    children: list[dict[int, int]]  # node -> {token: child node}
    leaf_name: dict[int, int]  # leaf node -> name index
    name_paths: list[list[int]]  # name index -> nodes after the root, in order

    @classmethod
    def build(cls, token_lists: list[list[int]]) -> Trie:
        children: list[dict[int, int]] = [{}]
        leaf_name: dict[int, int] = {}
        paths = []
        for i, tokens in enumerate(token_lists):
            node, path = 0, []
            for t in tokens:
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(children)
                    children[node][t] = nxt
                    children.append({})
                node = nxt
                path.append(node)
            if node in leaf_name:
                raise ValueError(f"names {leaf_name[node]} and {i} have the same tokens")
            leaf_name[node] = i
            paths.append(path)
        return cls(children, leaf_name, paths)


class PrefixScorer:
    """Scores cluster names after prompts that start with one shared prefix.

    `model` is a causal LM (transformers, Llama-like: `get_decoder()` and tied or untied output
    embeddings), `names` the cluster names in catalog order, `prefix` the text every prompt starts
    with. Suffixes are the prompt text after the prefix. `end_token_id` closes an answer (the
    chat end token); None: the chat template's end of turn (prompts.end_of_turn_id).
    """

    def __init__(
        self,
        model,
        tokenizer,
        names: list[str],
        prefix: str,
        end_token_id=None,
        group_lines: bool = True,
    ):
        from common.model import ModelError

        self.model = model.eval()
        self.group_lines = group_lines  # verbalize: share each batch's repeated first lines
        self.tokenizer = tokenizer
        self.names = list(names)
        self.decoder = model.get_decoder()
        out_emb = model.get_output_embeddings()
        if out_emb is None or getattr(out_emb, "weight", None) is None:
            raise ModelError(f"{type(model).__name__} has no output embeddings to score names with")
        self.head = out_emb.weight  # (vocab, hidden)
        self.bias = getattr(out_emb, "bias", None)  # (vocab,) or None (Phi has one)
        self.scale, self.softcap = logit_transform(model.config)
        self.attn = getattr(model.config, "_attn_implementation", None) or "eager"
        if self.attn not in ("sdpa", "eager"):
            raise ModelError(
                f"attention implementation {self.attn!r} cannot take the scorer's per-row masks: "
                "load the model with attn_implementation='sdpa' or 'eager'"
            )
        self.device = self.head.device
        # What closes an answer: the template's end of turn (common/prompts.py end_of_turn_id).
        self.end_id = end_of_turn_id(tokenizer) if end_token_id is None else end_token_id
        # Names as prompts render and fine-tuning answers them: on one line, trimmed.
        self.name_tokens = [
            tokenizer(clean(n), add_special_tokens=False)["input_ids"] + [self.end_id]
            for n in names
        ]
        self.name_index = {clean(n): i for i, n in enumerate(self.names)}
        self.max_name_tokens = max(len(t) for t in self.name_tokens)
        self.trie = Trie.build(self.name_tokens)
        self._plan()
        self.prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        self.P = len(self.prefix_ids)
        self.flops = 0.0  # model FLOPs spent (2 x params per token + attention), for MFU
        self.n_params = sum(
            p.numel() for n, p in self.decoder.named_parameters() if "embed_tokens" not in n
        )
        self.n_layers = self.decoder.config.num_hidden_layers
        self.prefix_kv = []  # no prefix: every row starts from an empty cache
        if self.P:
            with torch.inference_mode():
                ids = torch.tensor([self.prefix_ids], dtype=torch.long, device=self.device)
                out = self.decoder(input_ids=ids, use_cache=True)
                self.prefix_kv = [(la.keys, la.values) for la in out.past_key_values.layers]
            self.n_layers = len(self.prefix_kv)
        self._count(self.P, self.P)
        self._check(model)

    def _check(self, model) -> None:
        """Refuse a model the scorer would score wrongly. Two comparisons on a probe (a name's
        tokens after the prefix, then the deepest appended trie path): the head, our logits of
        the decoder's states against the model's own logits of the same forward (an output
        transform we do not know); the path, the states through the prefix cache, suffix and
        tree mask against a plain forward's (an attention or position scheme we do not know).
        Bounds leave room for rounding: bf16 logits are 2^-8 relative, and a cached bf16
        forward drifts ~2% of the largest logit from an uncached one (SmolLM2-135M)."""
        from common.model import ModelError

        probe = self.name_tokens[0][:PROBE_TOKENS]
        toks = torch.unique(self.edge_tok[self.edge_ok]).to(self.device)
        reduced = self.head.dtype != torch.float32 or torch.is_autocast_enabled(self.device.type)
        flops = self.flops
        with torch.inference_mode():
            h, _, L, _ = self._forward([probe], ext=True)
            checks = [(probe, h[0, len(probe) - 1])]
            if self.ext_tokens:
                i = int(np.argmax(self.ext_depth))
                node = self.ext_nodes[i]
                name = next(j for j, path in enumerate(self.trie.name_paths) if node in path)
                path = self.name_tokens[name][: self.trie.name_paths[name].index(node) + 1]
                checks.append((probe + path, h[0, L + i]))
            errors = {"head": [0.0, 0.0], "path": [0.0, 0.0]}
            for ids, cached in checks:
                full = torch.tensor([self.prefix_ids + ids], dtype=torch.long, device=self.device)
                want = model(input_ids=full).logits[0, -1, toks].float()
                plain = self._logits(self.decoder(input_ids=full).last_hidden_state[0, -1], toks)
                top = 1.0 + float(want.abs().max())
                for key, got, ref, tol in (
                    ("head", plain, want, 0.02),
                    ("path", self._logits(cached, toks), plain, 0.1 if reduced else 0.01),
                ):
                    errors[key][0] = max(errors[key][0], float((got - ref).abs().max()))
                    errors[key][1] = max(errors[key][1], tol * top)
        self.flops = flops  # the check is not bulk work
        self.check_errors = errors  # {check: [largest logit error, its bound]}
        for key, (err, bound) in errors.items():
            if key == "path" and not err <= bound and quantized(model):
                # Dynamically quantized activations take their scale from the whole batch, so
                # no two batchings agree exactly: said, not refused (bench/int8_scoring.py).
                log.warning("quantized model: cached scoring is off by %.3g logits", err)
                continue
            if not err <= bound:
                what = (
                    "its logits are not its output embeddings' (with bias, logits_scaling, "
                    "logit_scale, final_logit_softcapping) of the decoder's last state"
                    if key == "head"
                    else "its states through a prefix cache and a tree-shaped mask are not "
                    "a plain forward's"
                )
                raise ModelError(
                    f"{type(model).__name__} ({model.config.model_type}) is not supported by "
                    f"the verbalizer: {what} (largest logit error {err:.3g} > {bound:.3g})"
                )

    def _mask(self, ok: torch.Tensor) -> torch.Tensor:
        """The attention mask the model's attention takes: SDPA a boolean one, eager attention
        an additive one (it adds the mask to the scores: a boolean would add 0 or 1)."""
        ok = ok.to(self.device)
        if self.attn == "sdpa":
            return ok
        dtype = self.head.dtype
        return torch.zeros(ok.shape, dtype=dtype, device=self.device).masked_fill(
            ~ok, torch.finfo(dtype).min
        )

    def _logits(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """fp32 logits (..., T) of `states` (..., H) for token ids `tokens` (T,), as the model's
        head computes them, on the model's device. Only the T head rows are cast to fp32."""
        with torch.autocast(self.device.type, enabled=False):
            logits = states.float() @ self.head[tokens].float().T
            if self.bias is not None:
                logits = logits + self.bias[tokens].float()
            return self._transform(logits)

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        return transform_logits(logits, self.scale, self.softcap)

    # ---- the trie plan: which tokens to append and where each branching node's state lives ----
    def _plan(self) -> None:
        ch = self.trie.children
        branch = [0] + [n for n in range(1, len(ch)) if len(ch[n]) >= 2]
        need: set[int] = set()
        parent = {c: p for p in range(len(ch)) for c in ch[p].values()}
        token_of = {c: t for p in range(len(ch)) for t, c in ch[p].items()}
        for n in branch[1:]:
            while n != 0:  # the path to a branching node: each node on it is one appended token
                need.add(n)
                n = parent[n]
        ext = sorted(need, key=lambda n: (self._depth(n, parent), n))
        self.ext_nodes = ext
        ext_index = {n: i for i, n in enumerate(ext)}
        self.ext_tokens = [token_of[n] for n in ext]
        self.ext_depth = [self._depth(n, parent) for n in ext]
        # ext_sees[i, j]: appended token i attends appended token j (j is i or an ancestor).
        E = len(ext)
        sees = np.zeros((E, E), dtype=bool)
        for i, n in enumerate(ext):
            m = n
            while m != 0:
                sees[i, ext_index[m]] = True
                m = parent[m]
        self.ext_sees = torch.tensor(sees)
        self.branch_nodes = branch
        self.branch_ext = [-1] + [ext_index[n] for n in branch[1:]]  # -1: last suffix token
        # Edges out of branching nodes, padded to (J, C) for one log-softmax per node.
        C = max(len(ch[n]) for n in branch)
        J = len(branch)
        edge_tok = np.zeros((J, C), dtype=np.int64)
        edge_ok = np.zeros((J, C), dtype=bool)
        edge_names = np.zeros((J, C, len(self.names)), dtype=np.float32)
        slot = {}
        for j, n in enumerate(branch):
            for c, (tok, child) in enumerate(sorted(ch[n].items())):
                edge_tok[j, c], edge_ok[j, c] = tok, True
                slot[child] = (j, c)
        for i, path in enumerate(self.trie.name_paths):
            for node in path:
                if node in slot:
                    j, c = slot[node]
                    edge_names[j, c, i] = 1.0
        self.edge_tok = torch.tensor(edge_tok)
        self.edge_ok = torch.tensor(edge_ok)
        self.edge_names = torch.tensor(edge_names)  # (J, C, n): edge lies on name i's path

    @staticmethod
    def _depth(n: int, parent: dict[int, int]) -> int:
        d = 0
        while n != 0:
            n, d = parent[n], d + 1
        return d

    def _count(self, q_tokens: int, kv_tokens: float) -> None:
        """2 FLOPs per parameter per token, plus attention (QK^T and AV: 4 x hidden x keys)."""
        hidden = self.head.shape[1]
        self.flops += (
            2.0 * self.n_params * q_tokens + 4.0 * hidden * self.n_layers * q_tokens * kv_tokens
        )

    # ---- the batched forward over prefix cache + ragged suffixes (+ appended trie tokens) ----
    def _suffix_ids(self, suffixes: list[str]) -> list[list[int]]:
        return [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in suffixes]

    def _cache(self, B: int):
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[
                (k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in self.prefix_kv
            ]
        )

    def _forward(self, suffix_ids: list[list[int]], ext: bool, base=None):
        """Hidden states (B, Q, H) for suffix (+ appended trie tokens) and the cache it filled.

        `base` = (kv, ok, start): a per-row cache to continue instead of the shared prefix: kv a
        list of (keys, values) per layer with K cached positions, ok (B, K) which of them a row
        sees, start (B,) the position id of each row's first suffix token."""
        from transformers import DynamicCache

        B = len(suffix_ids)
        if base is None:
            cache, K = self._cache(B), self.P
            ok = torch.ones((B, K), dtype=torch.bool)
            start = torch.full((B,), self.P, dtype=torch.long)
        else:
            kv, ok, start = base
            cache, K = DynamicCache(ddp_cache_data=kv), ok.shape[1]
        lens = torch.tensor([len(s) for s in suffix_ids], dtype=torch.long)
        if B and int(lens.min()) == 0:
            # A row's state is its last suffix token's: with none it would read another position.
            raise ValueError(
                "every prompt must keep at least one token after the shared prefix "
                "(common.prompts.common_prefix cuts so)"
            )
        L = int(lens.max())
        E = len(self.ext_tokens) if ext else 0
        Q = L + E
        ids = torch.zeros((B, Q), dtype=torch.long)
        for b, s in enumerate(suffix_ids):
            ids[b, : len(s)] = torch.tensor(s)
        t = torch.arange(L)
        pos = torch.empty((B, Q), dtype=torch.long)
        pos[:, :L] = start[:, None] + torch.minimum(t[None, :], (lens - 1)[:, None])
        mask = torch.zeros((B, 1, Q, K + Q), dtype=torch.bool)
        mask[:, 0, :, :K] = ok[:, None, :]
        real = t[None, :] < lens[:, None]  # (B, L)
        causal = torch.tril(torch.ones((L, L), dtype=torch.bool))
        mask[:, 0, :L, K : K + L] = causal[None] & real[:, None, :] & real[:, :, None]
        if E:
            ids[:, L:] = torch.tensor(self.ext_tokens)
            pos[:, L:] = start[:, None] + lens[:, None] - 1 + torch.tensor(self.ext_depth)[None, :]
            mask[:, 0, L:, K : K + L] = real[:, None, :]
            mask[:, 0, L:, K + L :] = self.ext_sees[None]
        out = self.decoder(
            input_ids=ids.to(self.device),
            position_ids=pos.to(self.device),
            attention_mask=self._mask(mask),
            past_key_values=cache,
            use_cache=True,
        )
        self._count(B * Q, K + Q / 2)
        return out.last_hidden_state, lens, L, out.past_key_values

    def _grouped_base(self, suffixes: list[str]):
        """Split each suffix after its first line; run every distinct first line once (batched)
        and give each row that line's cache: (base for `_forward`, rest token ids), or None
        when no two rows share a first line (nothing to save).

        Bulk prompts are ordered by c1 and name c1 on their first line, so a batch holds a few
        distinct first lines: their tokens are paid once instead of once per row. Exact: a row
        whose split tokenizes differently from its whole suffix keeps its whole suffix."""
        heads, rests = [], []
        for s in suffixes:
            cut = s.find("\n") + 1
            head_ids = self.tokenizer(s[:cut], add_special_tokens=False)["input_ids"] if cut else []
            rest_ids = self.tokenizer(s[cut:], add_special_tokens=False)["input_ids"]
            if (
                not cut
                or not rest_ids
                or head_ids + rest_ids != self.tokenizer(s, add_special_tokens=False)["input_ids"]
            ):
                head_ids, rest_ids = [], self.tokenizer(s, add_special_tokens=False)["input_ids"]
            heads.append(tuple(head_ids))
            rests.append(rest_ids)
        unique = list(dict.fromkeys(h for h in heads if h))
        if len(unique) == len([h for h in heads if h]):
            return None, None
        group = {h: i for i, h in enumerate(unique)}
        _, glens, G, gcache = self._forward([list(h) for h in unique], ext=False)
        B = len(suffixes)
        # Rows without a head use group slot 0's cache with its suffix part masked out.
        row_group = torch.tensor([group.get(h, 0) for h in heads])
        row_len = torch.tensor([len(h) for h in heads])
        kv = [
            (
                layer.keys.index_select(0, row_group.to(self.device)),
                layer.values.index_select(0, row_group.to(self.device)),
            )
            for layer in gcache.layers
        ]
        ok = torch.zeros((B, self.P + G), dtype=torch.bool)
        ok[:, : self.P] = True
        ok[:, self.P :] = torch.arange(G)[None, :] < row_len[:, None]
        return (kv, ok, self.P + row_len), rests

    # ---- (a) verbalizer: every cluster's constrained-decoding probability, one forward ----
    def verbalize(
        self, suffixes: list[str], exclude: list[list[int]] | None = None
    ) -> torch.Tensor:
        """Log-probabilities (B, n_names) float32; excluded name indices get -inf."""
        with torch.inference_mode():
            base, rests = self._grouped_base(suffixes) if self.group_lines else (None, None)
            if base is None:
                rests = self._suffix_ids(suffixes)
            h, lens, L, _ = self._forward(rests, ext=True, base=base)
            B = h.shape[0]
            rows = torch.arange(B)
            states = []
            for e in self.branch_ext:
                states.append(h[rows, lens - 1] if e < 0 else h[:, L + e])
            hb = torch.stack(states, dim=1)  # (B, J, H)
            edge = self.edge_tok.to(self.device)  # (J, C)
            with torch.autocast(self.device.type, enabled=False):
                w = self.head[edge].float()  # (J, C, H): fp32 rows, see the module docstring
                logits = torch.einsum("bjh,jch->bjc", hb.float(), w)
                if self.bias is not None:
                    logits = logits + self.bias[edge].float()
                logits = self._transform(logits).cpu()
        # The bookkeeping stays float32 under a caller's bf16 autocast (the fine-tune's held-out
        # scoring): bf16 log-probs would tie distinct names and cannot become numpy arrays.
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            valid = torch.ones((B, len(self.names)), dtype=torch.float32)
            for b, ex in enumerate(exclude or []):
                valid[b, list(ex)] = 0.0
            live = torch.einsum("bn,jcn->bjc", valid, self.edge_names) > 0
            live &= self.edge_ok[None]
            logp = torch.log_softmax(logits.masked_fill(~live, float("-inf")), dim=-1)
            logp = torch.nan_to_num(logp.masked_fill(~live, NEG), nan=NEG, neginf=NEG)
            scores = torch.einsum("bjc,jcn->bn", logp, self.edge_names)
            return scores.masked_fill(valid == 0, float("-inf"))

    def top_k(self, suffixes: list[str], exclude: list[list[int]], k: int):
        """(indices (B, k'), log-probs (B, k')) best first, k' = min(k, n - 2), by `verbalize`."""
        scores = self.verbalize(suffixes, exclude)
        kk = min(k, len(self.names) - max((len(set(e)) for e in exclude), default=0))
        # Stable order on ties: higher score first, then lower catalog position.
        order = np.lexsort(
            (np.arange(len(self.names))[None, :].repeat(len(suffixes), 0), -scores.numpy())
        )
        idx = torch.tensor(order[:, :kk])
        return idx, torch.gather(scores, 1, idx)

    # ---- (b) constrained decoding: beam search over the trie, k beams per row ----
    def constrained(self, suffixes: list[str], exclude: list[list[int]], k: int):
        """(indices (B, k'), log-probs (B, k')) from step-by-step beam search over the trie."""
        n = len(self.names)
        with torch.inference_mode():
            h, lens, L, cache = self._forward(self._suffix_ids(suffixes), ext=False)
            B = h.shape[0]
            last = h[torch.arange(B), lens - 1]
            kv_ok = torch.zeros((B, self.P + L), dtype=torch.bool)
            kv_ok[:, : self.P] = True
            kv_ok[:, self.P :] = torch.arange(L)[None, :] < lens[:, None]
            banned = [set(e) for e in exclude]
            # A beam: (row, node, logp, cache row). Finished names collect per row.
            beams = [(b, 0, 0.0, b) for b in range(B)]
            done: list[list[tuple[float, int]]] = [[] for _ in range(B)]
            state = last
            steps = 0
            while beams:
                cand: dict[int, list[tuple[float, int, int, int]]] = {}
                # fp32 logits of the tokens some beam may take next (not the whole vocabulary).
                live = [
                    [
                        (t, c)
                        for t, c in self.trie.children[node].items()
                        if self._alive(c, banned[b])
                    ]
                    for b, node, _, _ in beams
                ]
                union = sorted({t for kids in live for t, _ in kids})
                col = {t: j for j, t in enumerate(union)}
                tok_ids = torch.tensor(union, dtype=torch.long, device=self.device)
                logits = self._logits(state, tok_ids).cpu() if union else None
                for i, (b, _, lp, _) in enumerate(beams):
                    kids = live[i]
                    if not kids:
                        continue
                    toks = torch.tensor([col[t] for t, _ in kids])
                    lps = torch.log_softmax(logits[i, toks], dim=0).tolist()
                    for (t, c), step_lp in zip(kids, lps, strict=True):
                        cand.setdefault(b, []).append((lp + step_lp, c, t, i))
                nxt = []
                for b, options in cand.items():
                    options.sort(key=lambda o: -o[0])
                    need = k - len(done[b])
                    for lp, c, t, i in options[: max(need, 0)]:
                        if c in self.trie.leaf_name:
                            done[b].append((lp, self.trie.leaf_name[c]))
                        else:
                            nxt.append((b, c, lp, i, t))
                if not nxt:
                    break
                # Feed one token per live beam: reorder the cache to the beams, extend the mask.
                src = torch.tensor([i for _, _, _, i, _ in nxt])
                cache.reorder_cache(src.to(self.device))
                kv_ok = torch.cat([kv_ok[src], torch.ones((len(nxt), 1), dtype=torch.bool)], dim=1)
                rows = torch.tensor([b for b, *_ in nxt])
                pos = self.P + lens[rows] + steps
                ids = torch.tensor([[t] for *_, t in nxt])
                out = self.decoder(
                    input_ids=ids.to(self.device),
                    position_ids=pos[:, None].to(self.device),
                    attention_mask=self._mask(kv_ok[:, None, None, :]),
                    past_key_values=cache,
                    use_cache=True,
                )
                self._count(len(nxt), kv_ok.shape[1])
                cache = out.past_key_values
                state = out.last_hidden_state[:, -1]
                beams = [(b, c, lp, j) for j, (b, c, lp, _, _) in enumerate(nxt)]
                steps += 1
            kk = min(k, n - max((len(s) for s in banned), default=0))
            idx = torch.zeros((B, kk), dtype=torch.long)
            val = torch.zeros((B, kk))
            for b in range(B):
                got = sorted(done[b], key=lambda o: (-o[0], o[1]))[:kk]
                for r, (lp, i) in enumerate(got):
                    idx[b, r], val[b, r] = i, lp
            return idx, val

    def _alive(self, node: int, banned: set[int]) -> bool:
        """Whether some name under node is not banned (memoised per banned set would be faster;
        tries are tiny)."""
        if node in self.trie.leaf_name:
            return self.trie.leaf_name[node] not in banned
        return any(self._alive(c, banned) for c in self.trie.children[node].values())

    # ---- (c) free generation, mapped back by exact match ----
    def generate(self, suffixes: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy continuations (text up to the end token or a newline), batched with the cache."""
        steps = max_new_tokens or self.max_name_tokens + 1
        with torch.inference_mode():
            h, lens, L, cache = self._forward(self._suffix_ids(suffixes), ext=False)
            B = h.shape[0]
            state = h[torch.arange(B), lens - 1]
            kv_ok = torch.zeros((B, self.P + L), dtype=torch.bool)
            kv_ok[:, : self.P] = True
            kv_ok[:, self.P :] = torch.arange(L)[None, :] < lens[:, None]
            out_ids = [[] for _ in range(B)]
            finished = torch.zeros(B, dtype=torch.bool)
            for step in range(steps):
                # Greedy over the whole vocabulary in the model's dtype, as its own generate()
                # does; the bias and the transform as its head applies them.
                logits = (state @ self.head.T).float()
                if self.bias is not None:
                    logits = logits + self.bias.float()
                tok = self._transform(logits).argmax(dim=-1).cpu()
                for b in range(B):
                    if not finished[b]:
                        if tok[b].item() == self.end_id:
                            finished[b] = True
                        else:
                            out_ids[b].append(tok[b].item())
                if bool(finished.all()) or step == steps - 1:
                    break
                kv_ok = torch.cat([kv_ok, torch.ones((B, 1), dtype=torch.bool)], dim=1)
                out = self.decoder(
                    input_ids=tok[:, None].to(self.device),
                    position_ids=(self.P + lens + step)[:, None].to(self.device),
                    attention_mask=self._mask(kv_ok[:, None, None, :]),
                    past_key_values=cache,
                    use_cache=True,
                )
                self._count(B, kv_ok.shape[1])
                cache = out.past_key_values
                state = out.last_hidden_state[:, -1]
        texts = self.tokenizer.batch_decode(out_ids, skip_special_tokens=True)
        return [t.split("\n", 1)[0].strip() for t in texts]

    def match(self, text: str) -> int | None:
        """Name index of an exact match, else None (the paper's mapping of free answers); a
        name with stray whitespace in the catalog matches its one-line, trimmed form."""
        return self.name_index.get(clean(text))


def quantized(model) -> bool:
    """Whether some layer of the model is quantized (torch.ao, or a Hugging Face quantizer)."""
    return bool(getattr(model, "is_quantized", False)) or any(
        ".quantized." in type(m).__module__ for m in model.modules()
    )


def transform_logits(logits: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """The head output as the model returns it: scaled, then soft-capped (`logit_transform`)."""
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) the model applies to its head's output, from its config: Granite divides
    by `logits_scaling`, Cohere multiplies by `logit_scale`, Gemma-2 caps with
    tanh(x / c) * c (`final_logit_softcapping`). Other transforms fail PrefixScorer's check."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def read(name):
        value = getattr(text, name, None)
        return getattr(config, name, None) if value is None else value

    scale = 1.0
    if isinstance(read("logits_scaling"), (int, float)) and read("logits_scaling"):
        scale /= float(read("logits_scaling"))
    if isinstance(read("logit_scale"), (int, float)):
        scale *= float(read("logit_scale"))
    cap = read("final_logit_softcapping")
    return scale, (float(cap) if isinstance(cap, (int, float)) and cap else None)
