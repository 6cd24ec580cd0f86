"""Deformable attention, denoising group, decoder head and post-processing."""

import pytest
import torch

from hmpe.models.rtdetr import deformable
from hmpe.models.rtdetr.decoder import RTDETRDecoder, ScoreQuerySelector, generate_anchors
from hmpe.models.rtdetr.deformable import MSDeformableAttention, ms_deform_attn_core, ms_deform_attn_naive
from hmpe.models.rtdetr.denoising import dn_matched_indices, get_contrastive_denoising_training_group
from hmpe.models.rtdetr.loss import SetCriterion
from hmpe.models.rtdetr.matcher import HungarianMatcher
from hmpe.models.rtdetr.postprocess import PostProcessor
from hmpe.utils.boxes import box_cxcywh_to_xyxy, inverse_sigmoid

SHAPES = [(3, 5), (4, 2), (1, 3)]  # rectangular levels, one with a single row


def _random_sampling(B=2, Q=3, M=2, Dh=3, P=2, shapes=SHAPES, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = len(shapes)
    N = sum(h * w for h, w in shapes)
    value = torch.randn(B, N, M, Dh, generator=g, dtype=dtype)
    # [-0.3, 1.3]: a good share of the points falls partly or fully outside the map
    locs = torch.rand(B, Q, M, L, P, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(B, Q, M, L * P, generator=g, dtype=dtype).softmax(-1).reshape(B, Q, M, L, P)
    return value, locs, weights


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deformable_core_matches_naive_loop(dtype):
    value, locs, weights = _random_sampling(dtype=dtype)
    assert ((locs < 0) | (locs > 1)).any(), "test must cover points outside the map"
    fast = ms_deform_attn_core(value, SHAPES, locs, weights)
    ref = ms_deform_attn_naive(value, SHAPES, locs, weights)
    assert fast.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_deformable_core_exact_pixel_centres():
    # sampling exactly at a pixel centre returns that pixel (align_corners=False convention)
    h, w = 3, 4
    value = torch.arange(h * w, dtype=torch.float64).reshape(1, h * w, 1, 1)
    i, j = 2, 1
    locs = torch.tensor([(j + 0.5) / w, (i + 0.5) / h], dtype=torch.float64).reshape(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_core(value, [(h, w)], locs, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == pytest.approx(i * w + j)


def test_msdeform_reference_box_offset_scaling(monkeypatch):
    torch.manual_seed(0)
    D, M, L, P = 16, 2, 3, 4
    attn = MSDeformableAttention(D, M, L, P)
    B, Q = 2, 5
    query = torch.randn(B, Q, D)
    value = torch.randn(B, sum(h * w for h, w in SHAPES), D)
    captured = {}
    real_core = deformable.ms_deform_attn_core

    def spy(v, shapes, locs, w):
        captured["locs"] = locs
        return real_core(v, shapes, locs, w)

    monkeypatch.setattr(deformable, "ms_deform_attn_core", spy)
    ref_box = torch.rand(B, Q, 1, 4) * 0.5 + 0.25
    out = attn(query, ref_box, value, SHAPES)
    assert out.shape == (B, Q, D)
    # at init the offset weight is 0, so offsets = bias; location = c + bias / P * wh / 2
    bias = attn.sampling_offsets.bias.reshape(1, 1, M, L, P, 2)
    expected = ref_box[:, :, None, :, None, :2] + bias / P * ref_box[:, :, None, :, None, 2:] * 0.5
    torch.testing.assert_close(captured["locs"], expected.expand_as(captured["locs"]))

    ref_pt = torch.rand(B, Q, 1, 2)
    out = attn(query, ref_pt, value, SHAPES)
    norm = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float32).reshape(1, 1, 1, L, 1, 2)
    torch.testing.assert_close(captured["locs"], (ref_pt[:, :, None, :, None, :] + bias / norm).expand_as(captured["locs"]))


# --------------------------------------------------------------------------- denoising
def _targets():
    return [
        {"labels": torch.tensor([1, 2, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.5, 0.5, 0.2, 0.2], [0.7, 0.4, 0.1, 0.1]])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.6, 0.3, 0.2]])},
    ]


def test_denoising_group_layout_and_attention_mask():
    torch.manual_seed(0)
    C, Q, D = 4, 7, 8
    embed = torch.nn.Embedding(C + 1, D, padding_idx=C)
    content, ref, mask, meta = get_contrastive_denoising_training_group(_targets(), C, Q, embed, num_denoising=7)
    max_gt, groups = 3, 7 // 3
    n_dn = 2 * max_gt * groups
    assert meta["dn_num_group"] == groups and meta["dn_num_split"] == [n_dn, Q]
    assert content.shape == (3, n_dn, D) and ref.shape == (3, n_dn, 4) and mask.shape == (n_dn + Q, n_dn + Q)
    assert mask.dtype == torch.bool
    # matching queries never see dn queries, but see each other
    assert mask[n_dn:, :n_dn].all() and not mask[n_dn:, n_dn:].any()
    # dn queries see their own group and the matching queries, nothing of the other groups
    assert not mask[:n_dn, n_dn:].any()
    for a in range(n_dn):
        for b in range(n_dn):
            assert mask[a, b].item() == (a // (2 * max_gt) != b // (2 * max_gt))
    # positive indices: group-major, first max_gt slots of each group
    assert meta["dn_positive_idx"][0].tolist() == [0, 1, 2, 6, 7, 8]
    assert meta["dn_positive_idx"][1].numel() == 0
    assert meta["dn_positive_idx"][2].tolist() == [0, 6]
    idx = dn_matched_indices(meta, _targets())
    assert idx[0][1].tolist() == [0, 1, 2, 0, 1, 2] and idx[2][1].tolist() == [0, 0]
    # padded slots (image 1 everywhere, image 2 beyond its single GT) use the zero padding row
    assert torch.all(content[1] == 0) and torch.all(content[2, 1:3] == 0)


def test_denoising_noise_free_and_noise_magnitudes():
    torch.manual_seed(0)
    C, D = 4, 8
    embed = torch.nn.Embedding(C + 1, D, padding_idx=C)
    tg = _targets()
    content, ref, _, meta = get_contrastive_denoising_training_group(tg, C, 5, embed, 6, label_noise_ratio=0.0, box_noise_scale=0.0)
    # no noise: positive and negative slots carry the exact GT
    torch.testing.assert_close(ref[0, :3], inverse_sigmoid(tg[0]["boxes"]))
    torch.testing.assert_close(ref[0, 3:6], inverse_sigmoid(tg[0]["boxes"]))
    torch.testing.assert_close(content[0, :3], embed(tg[0]["labels"]))

    # with noise (boxes away from the border, so no clipping): positive corners move < half a side,
    # negative corners move between 1 and 2 half sides
    _, ref, _, meta = get_contrastive_denoising_training_group(tg, C, 5, embed, 60, label_noise_ratio=0.0, box_noise_scale=1.0)
    gt = box_cxcywh_to_xyxy(tg[0]["boxes"])
    half = (tg[0]["boxes"][:, 2:] * 0.5).tile(1, 2)
    noisy = box_cxcywh_to_xyxy(ref[0].sigmoid())
    # a negative whose corners crossed (x1 > x2) collapses to a zero-size box: skip those
    proper = (ref[0].sigmoid()[:, 2:] > 1e-3).all(-1)
    checked = 0
    for g in range(meta["dn_num_group"]):
        pos = noisy[g * 6 : g * 6 + 3]
        neg = (noisy[g * 6 + 3 : g * 6 + 6] - gt).abs()[proper[g * 6 + 3 : g * 6 + 6]]
        assert ((pos - gt).abs() <= half + 1e-5).all()
        h = half[proper[g * 6 + 3 : g * 6 + 6]]
        assert (neg >= h - 1e-5).all() and (neg <= 2 * h + 1e-5).all()
        checked += len(neg)
    assert checked > 10


def test_denoising_label_flip_rate():
    torch.manual_seed(0)
    C = 10
    embed = torch.nn.Embedding(C + 1, 4, padding_idx=C)
    tg = [{"labels": torch.full((50,), 3), "boxes": torch.full((50, 4), 0.5)}]
    content, _, _, _ = get_contrastive_denoising_training_group(tg, C, 5, embed, 2000, label_noise_ratio=0.5)
    same = (content[0] == embed.weight[3]).all(-1).float().mean().item()
    # flip probability 0.25, and a flip to the same class happens 1/C of the time
    assert abs(same - (1 - 0.25 * (1 - 1 / C))) < 0.03


def test_denoising_empty_batch_gives_no_group():
    embed = torch.nn.Embedding(3, 4, padding_idx=2)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    assert get_contrastive_denoising_training_group(empty, 2, 5, embed) == (None, None, None, None)
    assert get_contrastive_denoising_training_group(_targets(), 2, 5, embed, num_denoising=0)[0] is None


# --------------------------------------------------------------------------- anchors
def test_anchors_h_major_rectangular_and_valid_mask():
    shapes = [(4, 6), (2, 3)]
    anchors, valid = generate_anchors(shapes)
    assert anchors.shape == (1, 4 * 6 + 2 * 3, 4) and valid.shape == (1, 30, 1)
    a = anchors[0, :24][valid[0, :24, 0]].sigmoid()
    # token k = i * w + j (h-major): centre ((j+.5)/w, (i+.5)/h)
    full = torch.sigmoid(anchors[0, 7])  # i=1, j=1 on level 0
    torch.testing.assert_close(full, torch.tensor([1.5 / 6, 1.5 / 4, 0.05, 0.05]))
    torch.testing.assert_close(torch.sigmoid(anchors[0, 24 + 5]), torch.tensor([2.5 / 3, 1.5 / 2, 0.1, 0.1]))
    assert a.numel() > 0
    # invalid anchors are inf in logit space
    shapes = [(80, 80)]
    anchors, valid = generate_anchors(shapes)
    assert not valid[0, 0, 0] and torch.isinf(anchors[0, 0]).all()  # 0.5/80 < 0.01
    assert valid[0, 81, 0] and torch.isfinite(anchors[0, 81]).all()


# --------------------------------------------------------------------------- decoder head
C, D = 5, 32


def _decoder(**kw):
    args = dict(hidden_dim=D, num_queries=12, nhead=4, num_layers=3, dim_feedforward=64, num_denoising=12, num_points=2)
    args.update(kw)
    return RTDETRDecoder(C, **args)


def _feats(B=3, H=48, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, H // s, W // s, generator=g) for s in (8, 16, 32)]


def test_decoder_train_forward_backward_with_empty_image():
    torch.manual_seed(0)
    dec = _decoder().train()
    tg = _targets()
    out = dec(_feats(), tg)
    Q = 12
    assert out["pred_logits"].shape == (3, Q, C) and out["pred_boxes"].shape == (3, Q, 4)
    assert len(out["aux_outputs"]) == 2 and all(a["pred_logits"].shape == (3, Q, C) for a in out["aux_outputs"])
    assert out["enc_outputs"]["pred_logits"].shape == (3, Q, C) and out["enc_outputs"]["pred_boxes"].shape == (3, Q, 4)
    n_dn = out["dn_meta"]["dn_num_split"][0]
    assert n_dn == 2 * 3 * 4
    assert len(out["dn_outputs"]) == 3 and out["dn_outputs"][0]["pred_boxes"].shape == (3, n_dn, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()

    crit = SetCriterion(C, HungarianMatcher())
    losses = crit(out, tg)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = {n: p.grad for n, p in dec.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert dec.denoising_class_embed.weight.grad.abs().sum() > 0


def test_decoder_train_all_empty_batch():
    torch.manual_seed(0)
    dec = _decoder().train()
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    out = dec(_feats(B=2), empty)
    assert out["dn_meta"]["dn_num_group"] == 0 and out["dn_outputs"][0]["pred_logits"].shape == (2, 0, C)
    losses = SetCriterion(C, HungarianMatcher())(out, empty)
    assert "loss_vfl_dn_0" in losses and losses["loss_bbox"].item() == 0.0
    sum(losses.values()).backward()
    # every parameter is in the graph (DDP without find_unused_parameters)
    assert all(p.grad is not None for p in dec.parameters())


def test_decoder_eval_shapes_and_eval_idx():
    torch.manual_seed(0)
    dec = _decoder(eval_idx=-1).eval()
    feats = _feats(B=2, H=40, W=72)  # not a multiple of 32 on both sides
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, layer in enumerate(dec.decoder.layers)]
    with torch.no_grad():
        out = dec(feats)
        assert set(out) == {"pred_logits", "pred_boxes"} and out["pred_logits"].shape == (2, 12, C)
        assert calls == [0, 1, 2]

        calls.clear()
        full = dec(feats, return_all_layers=True)
        assert len(full["layer_outputs"]) == 3
        torch.testing.assert_close(full["pred_boxes"], full["layer_outputs"][2]["pred_boxes"])
        torch.testing.assert_close(full["pred_boxes"], out["pred_boxes"])

        calls.clear()
        dec.eval_idx = 1
        early = dec(feats)
        assert calls == [0, 1], "eval mode must stop after eval_idx"
        torch.testing.assert_close(early["pred_logits"], full["layer_outputs"][1]["pred_logits"])
        torch.testing.assert_close(early["pred_boxes"], full["layer_outputs"][1]["pred_boxes"])

        dec.return_all_layers = True
        assert len(dec(feats)["layer_outputs"]) == 3
    for h in hooks:
        h.remove()

    # training with eval_idx=1: main output is layer 1, aux the two others
    dec.train()
    dec.return_all_layers = False
    out = dec(feats, _targets()[:2])
    assert len(out["aux_outputs"]) == 2 and len(out["dn_outputs"]) == 3


def test_decoder_eval_spatial_size_anchor_cache():
    torch.manual_seed(0)
    dec = _decoder(eval_spatial_size=(48, 64)).eval()
    torch.testing.assert_close(dec.anchors, generate_anchors([(6, 8), (3, 4), (2, 2)])[0])
    assert "anchors" not in dec.state_dict()
    with torch.no_grad():
        a = dec(_feats(B=1, H=48, W=64))
        # other sizes still work (anchors built on the fly)
        b = dec(_feats(B=1, H=64, W=32))
    assert a["pred_boxes"].shape == b["pred_boxes"].shape == (1, 12, 4)


def test_query_selector_topk_skips_invalid_anchors():
    torch.manual_seed(0)
    sel = ScoreQuerySelector(D, C, num_queries=4)
    anchors, valid = generate_anchors([(80, 2)])  # cy of the first row = 0.5/80 < 0.01 -> invalid
    memory = torch.randn(2, 160, D)
    with torch.no_grad():
        sel.head.enc_score_head.bias.fill_(10.0)  # invalid tokens would tie with valid ones
    content, ref, logits, boxes = sel(memory, anchors, valid, None)
    assert content.shape == (2, 4, D) and ref.shape == (2, 4, 4) and logits.shape == (2, 4, C) and boxes.shape == (2, 4, 4)
    assert torch.isfinite(ref).all() and not ref.requires_grad and not content.requires_grad
    assert boxes.requires_grad and logits.requires_grad


def test_query_selector_boxes_on_selected_tokens_match_the_dense_head():
    # the box MLP runs on the K selected tokens only; values and gradients must be the dense head's
    torch.manual_seed(0)
    sel = ScoreQuerySelector(D, C, num_queries=6)
    torch.nn.init.normal_(sel.head.enc_bbox_head.layers[-1].weight, std=0.1)  # zero-init would hide a mix-up
    anchors, valid = generate_anchors([(8, 8), (4, 4)])
    memory = torch.randn(2, 80, D, requires_grad=True)
    content, ref, logits, boxes = sel(memory, anchors, valid, None)
    out_mem, dense_logits, dense_coord = sel.head(memory, anchors, valid)
    score = dense_logits.max(-1).values.masked_fill(~valid[..., 0], float("-inf"))
    index = score.topk(6, dim=1).indices  # [B,K]
    gather = lambda x: x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # noqa: E731
    torch.testing.assert_close(ref, gather(dense_coord))
    torch.testing.assert_close(boxes, gather(dense_coord).sigmoid())
    torch.testing.assert_close(logits, gather(dense_logits))
    torch.testing.assert_close(content, gather(out_mem))
    g_sel = torch.autograd.grad(boxes.sum() + logits.sum(), memory)[0]
    g_dense = torch.autograd.grad(gather(dense_coord).sigmoid().sum() + gather(dense_logits).sum(), memory)[0]
    torch.testing.assert_close(g_sel, g_dense)


# --------------------------------------------------------------------------- post-processing
def test_postprocess_topk_constructed_case():
    C_, Q = 3, 4
    logits = torch.full((2, Q, C_), -10.0)
    logits[0, 2, 1] = 3.0  # best
    logits[0, 0, 2] = 2.0
    logits[0, 2, 0] = 1.0  # same query, another class: kept (no NMS)
    logits[1, 3, 0] = 0.5
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(2, Q, 1)
    boxes[0, 2] = torch.tensor([0.25, 0.5, 0.5, 0.5])
    sizes = torch.tensor([[200, 100], [50, 60]])  # (w, h)
    pp = PostProcessor(C_, num_top_queries=3)
    res = pp({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert len(res) == 2 and res[0]["boxes"].shape == (3, 4)
    assert res[0]["labels"].tolist() == [1, 2, 0]
    torch.testing.assert_close(res[0]["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    torch.testing.assert_close(res[0]["boxes"][0], torch.tensor([0.0, 25.0, 100.0, 75.0]))
    torch.testing.assert_close(res[0]["boxes"][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    assert res[1]["labels"][0].item() == 0
    torch.testing.assert_close(res[1]["boxes"][0], torch.tensor([20.0, 18.0, 30.0, 42.0]))
    # K is capped by Q*C
    b, s, l = PostProcessor(C_, num_top_queries=100).forward_batched({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert b.shape == (2, Q * C_, 4) and s.shape == l.shape == (2, Q * C_)
    assert (s[:, :-1] >= s[:, 1:]).all()


def test_decoder_heads_fp32_under_autocast():
    torch.manual_seed(0)
    dec = _decoder(num_layers=2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dec(_feats(B=2), _targets()[:2])
        losses = SetCriterion(C, HungarianMatcher())(out, _targets()[:2])
    assert out["pred_logits"].dtype == out["pred_boxes"].dtype == torch.float32
    assert out["enc_outputs"]["pred_boxes"].dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_decoder_and_postprocess_export_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = _decoder(num_layers=2, eval_spatial_size=(48, 64))
            self.pp = PostProcessor(C, num_top_queries=10)

        def forward(self, f0, f1, f2, sizes):
            return self.pp.forward_batched(self.dec([f0, f1, f2]), sizes)

    torch.manual_seed(0)
    model = Head().eval()
    with torch.no_grad():
        for p in model.dec.dec_bbox_head.parameters():  # non-trivial boxes (zero-initialised heads)
            p.normal_(0, 0.1)
    inputs = (*_feats(B=2), torch.tensor([[640, 480], [320, 320]]))
    with torch.no_grad():
        ref = model(*inputs)
    path = tmp_path / "head.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), opset_version=17, dynamo=False, input_names=["f0", "f1", "f2", "sizes"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: t.numpy() for n, t in zip(["f0", "f1", "f2", "sizes"], inputs)})
    torch.testing.assert_close(torch.from_numpy(got[1]), ref[1], atol=1e-5, rtol=1e-4)  # scores
    torch.testing.assert_close(torch.from_numpy(got[2]), ref[2])  # labels
    torch.testing.assert_close(torch.from_numpy(got[0]), ref[0], atol=1e-2, rtol=1e-4)  # boxes, pixels


def test_decoder_without_denoising():
    torch.manual_seed(0)
    dec = _decoder(num_denoising=0, aux_loss=False).train()
    assert dec.denoising_class_embed is None
    out = dec(_feats(B=2), _targets()[:2])
    assert out["dn_outputs"] == [] and out["dn_meta"] is None and "aux_outputs" not in out
    losses = SetCriterion(C, HungarianMatcher())(out, _targets()[:2])
    assert set(losses) == {f"{k}{s}" for k in ("loss_vfl", "loss_bbox", "loss_giou") for s in ("", "_enc")}
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in dec.named_parameters() if not n.startswith("dec_") or n.startswith(("dec_score_head.2", "dec_bbox_head.2")))
