"""Built models: DF/LIAE wiring per docs/dfl.md §2.4 (checked against direct module calls), every archi option,
explicit graphs (presets re-declared, adapters, several identities), shape errors, torch.compile."""

from __future__ import annotations

import itertools
import tomllib

import attrs
import pytest
import torch

from engine.errors import RecipeError, RecipeErrors, TorchSAEError
from engine.graph import build, check, plan
from engine.recipe.graph_spec import parse_graph_table
from engine.recipe.specs import ModelSpec

R = 64


def _ms(archi="df-ud", graph=None, **kw):
    base = dict(resolution=R, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=4)
    base.update(kw)
    return ModelSpec(archi=archi, graph=graph, **base)


def _graph(text):
    g, errs = parse_graph_table(tomllib.loads(text)["graph"], "t.toml")
    assert errs == [], errs
    return g


def _imgs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, R, R, generator=g), torch.rand(n, 3, R, R, generator=g)


ALL_OPTS = ["".join(c) for k in range(5) for c in itertools.combinations("udtc", k)]


# every option combination for df; liae shares the modules, so a few cover its wiring
@pytest.mark.parametrize("kind,opts", [("df", o) for o in ALL_OPTS] + [("liae", o) for o in ("", "ud", "t", "udtc")])
def test_every_archi_builds_and_runs(kind, opts):
    archi = kind + (f"-{opts}" if opts else "")
    torch.manual_seed(0)
    model = build(_ms(archi))
    src, dst = _imgs()
    with torch.no_grad():
        out = model.forward_train(src, dst)
    for k in ("pred_src_src", "pred_dst_dst", "pred_src_dst"):
        assert out[k].shape == (2, 3, R, R) and out[k + "m"].shape == (2, 1, R, R)
        assert 0 <= out[k].min() and out[k].max() <= 1
    assert list(model.parts()) == (["encoder", "inter", "decoder_src", "decoder_dst"] if kind == "df"
                                   else ["encoder", "inter_AB", "inter_B", "decoder"])
    assert model.dfl_archi == archi


def test_df_wiring_matches_spec():
    torch.manual_seed(1)
    m = build(_ms("df-ud"))
    src, dst = _imgs()
    with torch.no_grad():
        out = m.forward_train(src, dst, no_code_grad=True)
        src_code = m.inter(m.encoder(src))  # docs/dfl.md §2.4 DF, one call per tensor as DFL does
        dst_code = m.inter(m.encoder(dst))
        exp = {"src_code": src_code, "dst_code": dst_code, "src_dst_code": dst_code}
        exp["pred_src_src"], exp["pred_src_srcm"] = m.decoder_src(src_code)
        exp["pred_dst_dst"], exp["pred_dst_dstm"] = m.decoder_dst(dst_code)
        exp["pred_src_dst"], exp["pred_src_dstm"] = m.decoder_src(dst_code)
        exp["pred_src_dst_no_code_grad"] = exp["pred_src_dst"]
        assert set(out) == set(exp)
        for k in exp:
            torch.testing.assert_close(out[k], exp[k], atol=1e-6, rtol=0, msg=k)
        celeb, celeb_m, face_m = m.swap(dst)
        torch.testing.assert_close(celeb, exp["pred_src_dst"], atol=1e-6, rtol=0)
        torch.testing.assert_close(celeb_m, exp["pred_src_dstm"], atol=1e-6, rtol=0)
        torch.testing.assert_close(face_m, exp["pred_dst_dstm"], atol=1e-6, rtol=0)


def test_liae_wiring_matches_spec():
    torch.manual_seed(2)
    m = build(_ms("liae-ud"))
    src, dst = _imgs()
    with torch.no_grad():
        out = m.forward_train(src, dst)
        es, ed = m.encoder(src), m.encoder(dst)
        ab_s, ab_d, b_d = m.inter_AB(es), m.inter_AB(ed), m.inter_B(ed)
        src_code = torch.cat([ab_s, ab_s], 1)  # docs/dfl.md §2.4: first half first
        dst_code = torch.cat([b_d, ab_d], 1)
        sd_code = torch.cat([ab_d, ab_d], 1)
        torch.testing.assert_close(out["src_code"], src_code, atol=1e-6, rtol=0)
        torch.testing.assert_close(out["dst_code"], dst_code, atol=1e-6, rtol=0)
        torch.testing.assert_close(out["src_dst_code"], sd_code, atol=1e-6, rtol=0)
        for name, code in (("src_src", src_code), ("dst_dst", dst_code), ("src_dst", sd_code)):
            img, mask = m.decoder(code)
            torch.testing.assert_close(out[f"pred_{name}"], img, atol=1e-6, rtol=0)
            torch.testing.assert_close(out[f"pred_{name}m"], mask, atol=1e-6, rtol=0)
        celeb, celeb_m, face_m = m.swap(dst)
        torch.testing.assert_close(celeb, m.decoder(sd_code)[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(face_m, m.decoder(dst_code)[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(m(dst)[0], celeb)
        torch.testing.assert_close(m.translate(dst, "dst", "src")[0], celeb)
        torch.testing.assert_close(m.reconstruct(src, "src")[0], out["pred_src_src"], atol=1e-6, rtol=0)


def test_no_code_grad_reaches_only_the_decoder():
    torch.manual_seed(3)
    m = build(_ms("df-ud"))
    src, dst = _imgs()
    out = m.forward_train(src, dst, no_code_grad=True)
    out["pred_src_dst_no_code_grad"].sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(p.grad is None for p in m.inter.parameters())
    assert all(p.grad is None for p in m.decoder_dst.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.decoder_src.parameters())
    assert "pred_src_dst_no_code_grad" not in m.forward_train(src, dst)


def test_explicit_graph_equal_to_preset_is_the_same_model():
    g = _graph("""
[graph]
swap_code = "target"
[[graph.nodes]]
name = "encoder"
type = "encoder"
[[graph.nodes]]
name = "inter_AB"
type = "inter"
input = "encoder"
out_ch = 32
[[graph.nodes]]
name = "inter_B"
type = "inter"
input = "encoder"
out_ch = 32
[[graph.nodes]]
name = "code_src"
type = "concat"
inputs = ["inter_AB", "inter_AB"]
[[graph.nodes]]
name = "code_dst"
type = "concat"
inputs = ["inter_B", "inter_AB"]
[[graph.nodes]]
name = "decoder"
type = "decoder"
[graph.identities.src]
code = "code_src"
decoder = "decoder"
[graph.identities.dst]
code = "code_dst"
decoder = "decoder"
""")
    preset = build(_ms("liae-ud"))
    explicit = build(_ms("liae-ud", graph=g))
    assert explicit.dfl_archi == "liae-ud"  # exactly DFL's wiring: exportable to DFL
    explicit.load_state_dict(preset.state_dict())
    src, dst = _imgs()
    with torch.no_grad():
        a, b = preset.forward_train(src, dst), explicit.forward_train(src, dst)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


ADAPTER_GRAPH = """
[graph]
swap_code = "source"
[[graph.nodes]]
name = "encoder"
type = "encoder"
[[graph.nodes]]
name = "enc_alice"
type = "encoder"
e_dims = 2
[[graph.nodes]]
name = "inter"
type = "inter"
input = "encoder"
[[graph.nodes]]
name = "inter_alice"
type = "inter"
input = "enc_alice"
[[graph.nodes]]
name = "adapter_src"
type = "adapter"
input = "inter"
[[graph.nodes]]
name = "adapter_dst"
type = "adapter"
input = "inter"
kind = "dense"
hidden = 8
[[graph.nodes]]
name = "adapter_alice"
type = "adapter"
input = "inter_alice"
hidden = 4
[[graph.nodes]]
name = "decoder_src"
type = "decoder"
[[graph.nodes]]
name = "decoder_dst"
type = "decoder"
[[graph.nodes]]
name = "decoder_alice"
type = "decoder"
d_dims = 2
[graph.identities.src]
code = "adapter_src"
decoder = "decoder_src"
[graph.identities.dst]
code = "adapter_dst"
decoder = "decoder_dst"
[graph.identities.alice]
code = "adapter_alice"
decoder = "decoder_alice"
"""


def test_adapter_graph_with_three_identities():
    torch.manual_seed(4)
    m = build(_ms("df-ud", graph=_graph(ADAPTER_GRAPH)))
    assert m.identities == ("src", "dst", "alice")
    assert m.dfl_archi is None
    assert list(m.parts()) == ["encoder", "enc_alice", "inter", "inter_alice", "adapter_src", "adapter_dst",
                               "adapter_alice", "decoder_src", "decoder_dst", "decoder_alice"]
    x, y = _imgs()
    with torch.no_grad():
        # fresh adapters are the identity, so alice -> src is decoder_src(inter_alice(enc_alice(x)))
        img, mask = m.translate(x, "alice", "src")
        ref = m.decoder_src(m.inter_alice(m.enc_alice(x)))
        torch.testing.assert_close(img, ref[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(mask, ref[1], atol=1e-6, rtol=0)
        for p in m.adapter_alice.parameters():
            p.add_(0.05)
        img2, _ = m.translate(x, "alice", "src")
        z = m.adapter_alice(m.inter_alice(m.enc_alice(x)))
        torch.testing.assert_close(img2, m.decoder_src(z)[0], atol=1e-6, rtol=0)
        assert not torch.allclose(img2, img)
        torch.testing.assert_close(m.translate(x, "alice", "alice")[0], m.reconstruct(x, "alice")[0])
        out = m.forward_train(x, y)
        torch.testing.assert_close(out["pred_src_dst"], m.translate(y, "dst", "src")[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(out["src_dst_code"], out["dst_code"])
        assert m.code(x, "alice").shape == (2, *m.code_shapes["alice"])


def _errs(ms):
    errs = check(ms)
    assert errs, "expected shape errors"
    with pytest.raises((RecipeError, RecipeErrors)):
        plan(ms)
    return "\n".join(str(e) for e in errs)


def test_shape_errors_name_the_node():
    g = _graph(ADAPTER_GRAPH.replace('name = "decoder_alice"\ntype = "decoder"', 'name = "decoder_alice"\ntype = '
                                     '"decoder"\nopts = "udt"'))
    text = _errs(_ms("df-ud", graph=g))
    # default opts "ud" (from df-ud): inters give 16×4×4 codes; ×32 renders 128×128
    assert "[graph.nodes[9]] decoder 'decoder_alice' (opts 'udt') upsamples ×32: code 'adapter_src' of shape " \
           "16×4×4 gives a 128×128 image, expected 64×64 (feed it a 2×2 latent" in text
    # with swap_code = source, every code reaches every decoder: a different latent shape is refused
    g = _graph(ADAPTER_GRAPH.replace('name = "inter_alice"\ntype = "inter"', 'name = "inter_alice"\ntype = "inter"'
                                     '\nout_ch = 8'))
    text = _errs(_ms("df-ud", graph=g))
    assert "decoder 'decoder_src' is fed codes of different shapes: src 'adapter_src' 16×4×4, dst 'adapter_dst' " \
           "16×4×4, alice 'adapter_alice' 8×4×4" in text


def test_more_shape_errors():
    base = """
[graph]
[[graph.nodes]]
name = "encoder"
type = "encoder"
[[graph.nodes]]
name = "a"
type = "inter"
input = "encoder"
[[graph.nodes]]
name = "b"
type = "inter"
input = "encoder"
opts = "t"
[[graph.nodes]]
name = "c"
type = "concat"
inputs = ["a", "b"]
[[graph.nodes]]
name = "decoder"
type = "decoder"
[graph.identities.src]
code = "c"
decoder = "decoder"
[graph.identities.dst]
code = "c"
decoder = "decoder"
"""
    text = _errs(_ms("df", graph=_graph(base)))
    assert "[graph.nodes[3]] concat 'c' inputs differ in spatial size: 'a' 16×8×8, 'b' 16×4×4" in text
    flat = base.replace('name = "a"\ntype = "inter"\ninput = "encoder"', 'name = "a"\ntype = "adapter"\ninput = '
                        '"encoder"')
    text = _errs(_ms("df", graph=_graph(flat)))
    assert "[graph.nodes[1]] conv1x1 adapter 'a' needs a C×H×W latent; input 'encoder' has shape 512" in text
    text = _errs(_ms("df-uz", graph=_graph(base)))
    assert "[model.archi] archi = 'df-uz': unknown option(s) 'z'" in text
    text = _errs(_ms("df-t", resolution=80))
    assert "t.toml" not in text
    assert "[model.archi] encoder 'encoder' (opts 't') downsamples by 32: resolution 80" in text


def test_graph_error_uses_recipe_file():
    from engine.recipe.specs import Recipe

    g = _graph(ADAPTER_GRAPH.replace('name = "decoder_alice"\ntype = "decoder"',
                                     'name = "decoder_alice"\ntype = "decoder"\nopts = "udt"'))
    r = attrs.evolve(Recipe(source="recipes/x.toml"), model=_ms("df-ud", graph=g))
    with pytest.raises(TorchSAEError, match=r"recipes/x.toml: \[graph.nodes\[9\]\] decoder 'decoder_alice'"):
        build(r)


@pytest.mark.parametrize("archi", ["df-ud", "liae-udt"])
def test_torch_compile_fullgraph_matches_eager(archi):
    torch._dynamo.reset()
    torch.manual_seed(5)
    m = build(_ms(archi, ae_dims=8, e_dims=2, d_dims=2, d_mask_dims=2)).eval()
    src, dst = _imgs()
    with torch.no_grad():
        eager = m.forward_train(src, dst)
        compiled = torch.compile(m.forward_train, fullgraph=True, backend="aot_eager")(src, dst)
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], atol=1e-6, rtol=1e-5, msg=k)
        sw = torch.compile(m.swap, fullgraph=True, backend="aot_eager")(dst)
        for a, b in zip(sw, m.swap(dst)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(6)
    m = build(_ms("liae-ud", ae_dims=8, e_dims=2, d_dims=2, d_mask_dims=2))
    src, dst = _imgs()
    eager = m.forward_train(src, dst)
    compiled = torch.compile(m.forward_train, fullgraph=True)(src, dst)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-5, rtol=1e-4, msg=k)
