from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from pose6d_ros.rendering.mesh import Mesh, decimate, load_mesh, pack_meshes

from rendering_helpers import data_path


def test_duck_texture_is_sampled_into_vertex_colours():
    m = load_mesh(data_path("duck.obj"))
    assert m.num_faces == 4212
    c = m.vertex_colors.numpy()
    # duckCM.png is mostly yellow with an orange beak: strong red and green, almost no blue.
    assert c[:, 0].mean() > 0.8 and c[:, 1].mean() > 0.6 and c[:, 2].mean() < 0.15
    assert c.std(0).max() > 0.02  # not a flat fallback colour


def test_untextured_mesh_is_grey_and_units_scale():
    m = load_mesh(data_path("bunny.obj"))
    assert torch.allclose(m.vertex_colors, torch.full_like(m.vertex_colors, 0.7))
    mm = load_mesh(data_path("bunny.obj"), units="mm")
    assert torch.allclose(mm.vertices, m.vertices * 1e-3)
    s = load_mesh(data_path("bunny.obj"), units="cm", scale=2.0)
    assert torch.allclose(s.vertices, m.vertices * 0.02)


def test_ply_vertex_colours_roundtrip(tmp_path):
    box = trimesh.creation.box((0.02, 0.04, 0.06))
    box.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(box.vertices), 1)).astype(np.uint8)
    path = tmp_path / "box.ply"
    box.export(path)
    m = load_mesh(path, units="m")
    assert m.num_faces == 12
    assert torch.allclose(m.vertex_colors, torch.tensor([1.0, 0.0, 0.0]).expand(m.num_vertices, 3))
    assert torch.allclose(m.extents.double(), torch.tensor([0.02, 0.04, 0.06], dtype=torch.float64), atol=1e-7)


def test_scene_is_concatenated_with_transforms(tmp_path):
    a = trimesh.creation.box((1.0, 1.0, 1.0))
    b = trimesh.creation.box((1.0, 1.0, 1.0))
    scene = trimesh.Scene()
    scene.add_geometry(a, node_name="a", transform=trimesh.transformations.translation_matrix([-2.0, 0, 0]))
    scene.add_geometry(b, node_name="b", transform=trimesh.transformations.translation_matrix([3.0, 0, 0]))
    path = tmp_path / "two.glb"
    scene.export(path)
    m = load_mesh(path)
    assert m.num_faces == 24
    assert m.vertices[:, 0].min().item() == pytest.approx(-2.5)
    assert m.vertices[:, 0].max().item() == pytest.approx(3.5)


def test_missing_and_broken_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.obj"):
        load_mesh(tmp_path / "nope.obj")
    bad = tmp_path / "empty.obj"
    bad.write_text("# nothing here\n")
    with pytest.raises(ValueError, match="empty.obj"):
        load_mesh(bad)
    with pytest.raises(ValueError, match="units"):
        load_mesh(data_path("bunny.obj"), units="inch")


def test_decimate_bounds_faces_and_keeps_shape_and_colour():
    duck = load_mesh(data_path("duck.obj"))
    small = decimate(duck, 1000)
    assert 500 <= small.num_faces <= 1000
    assert torch.allclose(small.extents, duck.extents, rtol=0.1)
    assert torch.allclose(small.vertex_colors.mean(0), duck.vertex_colors.mean(0), atol=0.1)
    assert decimate(duck, 10_000) is duck


def test_pack_meshes_pads_and_finds_edges():
    cube = Mesh.from_arrays(trimesh.creation.box().vertices, trimesh.creation.box().faces)
    tet = Mesh.from_arrays(
        np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float),
        np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]),
    )
    mb = pack_meshes([cube, tet])
    assert mb.faces.shape == (2, 12, 3)
    assert mb.face_valid.sum(1).tolist() == [12, 4]
    # Closed meshes: E = 3F/2 and every edge has two faces.
    assert mb.edge_valid.sum(1).tolist() == [18, 6]
    assert bool((mb.edge_opposite[mb.edge_valid] >= 0).all())
    # Normals of a cube's corner point outwards (away from the centre).
    v, n = mb.vertices[0, :8], mb.vertex_normals[0, :8]
    assert bool(((v * n).sum(-1) > 0).all())
    assert mb.to("cpu", torch.float64) is mb.to("cpu", torch.float64)


def test_closed_sign_tells_closed_outward_inward_and_open_meshes():
    box = trimesh.creation.box((0.02, 0.04, 0.06))  # closed, outward winding
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    meshes = [
        Mesh.from_arrays(v, f),
        Mesh.from_arrays(v, f[:, ::-1].copy()),  # inward winding
        Mesh.from_arrays(v, f[1:]),  # one triangle missing: open
    ]
    mb = pack_meshes(meshes)
    assert mb.closed_sign.tolist() == [1.0, -1.0, 0.0]
    assert torch.allclose(mb.bounds[0], torch.tensor([[-0.01, -0.02, -0.03], [0.01, 0.02, 0.03]]))


def test_pack_objects_follows_the_given_order_in_metres():
    """Registry objects -> renderer batch: mesh ``i`` is ``objects[i]`` (not registry order), in metres
    (its extent is the one of the raw file's vertices scaled by the registry), decimated above max_faces."""
    from pathlib import Path

    from pose6d_ros.registry import ObjectRegistry
    from pose6d_ros.rendering.mesh import pack_objects

    reg = ObjectRegistry.from_yaml(Path(__file__).resolve().parents[2] / "config" / "objects_lm_lite.yaml")
    objs = [reg.get(2), reg.get(1)]
    batch = pack_objects(objs)
    assert batch.names == (objs[0].name, objs[1].name)
    for i, o in enumerate(objs):
        v = o.model_vertices()
        np.testing.assert_allclose(batch.bounds[i].numpy(), np.stack([v.min(0), v.max(0)]), atol=1e-6)
    small = pack_objects(objs, max_faces=300)
    assert (small.num_faces <= 300).all() and (batch.num_faces > 300).all()
