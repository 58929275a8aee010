"""The pelvis below a drawn abdomen, for abdomen-pelvis scans (the most common abdominal CT protocol).

An abdomen-only phantom ends a little below the kidneys; an abdomen-pelvis scan goes on to the pubic symphysis,
through anatomy a model of the abdominal organs must learn to leave unlabelled: the aorta dividing into the iliac
arteries (the BTCV aorta and IVC labels end at the bifurcation and the confluence), the iliac wings, sacrum,
acetabula and femoral heads, the gluteal and iliopsoas muscles, the sigmoid and rectum, and the urinary bladder,
a fluid-filled sac like the gallbladder. Every structure here carries label 0.

Landmarks are placed from the subject's own kidneys and spine (drawn from a separate random stream, so the
abdomen above is the same patient with or without a pelvis). Proportions follow adult anatomy in millimetres:
bifurcation at L4 a few centimetres below the lower renal poles, sacral promontory about one and a half
vertebrae lower, femoral heads about 10 cm below the promontory, the symphysis about 3 cm below them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .ct_anatomy import AbdomenSubject, Solid, _ellipsoid, _turn, _u
from .fields import SmoothField
from .shapes import Ellipsoid, Tube, smooth_tube

_PELVIS_STREAM = 31  # default_rng([seed, _PELVIS_STREAM]): the pelvis's own draws
BONES = ("iliac_wings", "iliac_bodies", "acetabula", "sacrum", "pubis", "ischia")
FEMURS = ("femoral_heads", "femoral_necks", "femoral_shafts")


@dataclass(frozen=True)
class Pelvis:
    bifurcation_z: float  # aortic bifurcation (end of the aorta label)
    confluence_z: float  # iliac venous confluence (end of the IVC label)
    promontory_z: float  # top of S1: the lumbar spine ends here and the sacrum begins
    femoral_head_z: float
    symphysis_bottom_z: float  # lowest point of the pubic symphysis: where an abdomen-pelvis scan may stop
    head_radius: float
    solids: dict  # name -> Solid; painted in `paint_pelvis`

    def landmarks(self) -> dict:
        return {name: round(float(getattr(self, name)), 1) for name in
                ("bifurcation_z", "confluence_z", "promontory_z", "femoral_head_z", "symphysis_bottom_z")}


def _tube_at(tube: Tube, z: float) -> np.ndarray:
    """The point of a craniocaudal tube's centre line at height z (its points run from top to bottom)."""
    points = tube.points
    order = np.argsort(points[:, 2])
    return np.array([np.interp(z, points[order, 2], points[order, a]) for a in range(3)])


def tube_ending_at(tube: Tube, z: float) -> Tube:
    """The part of a craniocaudal tube above z, ending exactly at z."""
    keep = tube.points[:, 2] > z
    if keep.all() or not keep.any():
        return tube
    end = _tube_at(tube, z)
    radius = float(np.interp(z, tube.points[::-1, 2], tube.radii[::-1]))
    return Tube(np.vstack([tube.points[keep], end]), np.append(tube.radii[keep], radius))


def draw_pelvis(subject: AbdomenSubject) -> Pelvis:
    rng = np.random.default_rng([subject.seed, _PELVIS_STREAM])

    def u(low, high):
        return _u(rng, low, high)

    spine, trunk, organs = subject.spine, subject.trunk, subject.organs
    kidneys = [organs[name].shapes[0] for name in ("right_kidney", "left_kidney")]
    lower_pole = min(k.centre[2] - float(np.sqrt(((k.rotation[2] * k.radii) ** 2).sum())) for k in kidneys)
    bifurcation = lower_pole - u(25, 45)
    confluence = bifurcation - u(8, 18)
    crest = bifurcation + u(-5, 15)
    promontory = bifurcation - u(35, 50)
    head_z = promontory - u(95, 115)
    symphysis_bottom = head_z - u(30, 40)
    head_r = u(22, 26)
    hx = min(u(82, 98), trunk.half_width - 50.0)  # femoral head centre, right (+) and left (-)
    head_y = spine.body_y + u(25, 40)
    aorta_end = _tube_at(organs["aorta"].shapes[0], bifurcation)
    ivc_end = _tube_at(organs["ivc"].shapes[0], confluence)
    rough = SmoothField(rng, 40.0, n_waves=10)

    solids: dict[str, Solid] = {}
    # Muscles: iliopsoas over the pelvic brim in front of the hip, iliacus lining each iliac fossa, glutei behind.
    iliopsoas, iliacus, glutei, wings, bodies, cups, pubis, ischia = [], [], [], [], [], [], [], []
    arteries, veins, heads, necks, shafts = [], [], [], [], []
    for side in (1, -1):
        wing_turn = _turn("z", -side * u(35, 48))
        wing_centre = [side * u(68, 80), spine.body_y + u(5, 15), crest - u(40, 50)]
        wings.append(_ellipsoid(rng, wing_centre, [u(5.0, 6.5), u(55, 65), u(42, 50)], 6, wing_turn))
        iliacus.append(Ellipsoid(np.asarray(wing_centre) + wing_turn @ [-side * 14.0, 8.0, 0.0],
                                 np.array([12.0, 52.0, 40.0]), wing_turn))
        psoas_top = [side * (spine.body_radii[0] + 16.0), spine.body_y + 6.0, bifurcation - 10.0]
        iliopsoas.append(smooth_tube([psoas_top, [side * (hx - 15.0), head_y + 20.0, head_z + 25.0],
                                      [side * (hx - 5.0), head_y + 28.0, symphysis_bottom - 40.0]], [24.0, 18.0, 16.0]))
        glutei.append(_ellipsoid(rng, [side * u(55, 70), -trunk.back + trunk.fat[2] + u(35, 45), head_z + u(5, 20)],
                                 [u(50, 60), u(32, 42), u(95, 115)], 6))
        bodies.append(_ellipsoid(rng, [side * (hx - 5.0), head_y - 8.0, head_z + 28.0], [14.0, 22.0, 35.0], 6))
        cups.append(Ellipsoid(np.array([side * (hx - 4.0), head_y, head_z]), np.array([1.0, 1.0, 1.05]) * (head_r + 9.0),
                              np.eye(3)))
        pubis.append(smooth_tube([[side * (hx - 10.0), head_y + 15.0, head_z - 5.0],
                                  [side * u(8, 12), head_y + u(40, 55), symphysis_bottom + 18.0]], [8.0, 10.0]))
        tuberosity = [side * (hx - 25.0), head_y - u(20, 30), symphysis_bottom - 2.0]
        ischia.append(smooth_tube([[side * (hx - 12.0), head_y - 15.0, head_z - 15.0], tuberosity], [11.0, 13.0]))
        ischia.append(smooth_tube([tuberosity, [side * 10.0, head_y + 45.0, symphysis_bottom + 5.0]], [7.0, 7.0]))
        # Common iliac artery along the psoas, then external iliac in front of the hip; the internal iliac dives
        # into the pelvis. The veins run behind and medial to the arteries.
        common_end = np.array([side * u(30, 42), aorta_end[1] - u(0, 8), bifurcation - u(45, 60)])
        artery_r = 0.65 * float(organs["aorta"].shapes[0].radii.min())
        arteries.append(smooth_tube([aorta_end, common_end, [side * (hx - u(10, 18)), head_y + u(25, 35), head_z + 15.0],
                                     [side * (hx - 8.0), head_y + 30.0, symphysis_bottom - 60.0]],
                                    [artery_r, 0.85 * artery_r, 4.5, 4.5]))
        arteries.append(smooth_tube([common_end, [side * u(45, 60), spine.body_y - 10.0, promontory - 60.0]], [4.5, 3.5]))
        veins.append(smooth_tube([ivc_end, common_end + [-side * 6.0, -8.0, -6.0],
                                  [side * (hx - 22.0), head_y + 18.0, head_z + 12.0],
                                  [side * (hx - 16.0), head_y + 24.0, symphysis_bottom - 60.0]], [8.0, 7.0, 6.0, 5.5]))
        head = np.array([side * hx, head_y, head_z])
        heads.append(Ellipsoid(head, np.full(3, head_r), np.eye(3)))
        neck_end = head + [side * 25.0, -8.0, -22.0]
        necks.append(smooth_tube([head, neck_end], [15.0, 17.0]))
        necks.append(Ellipsoid(head + [side * 30.0, -12.0, -15.0], np.array([14.0, 18.0, 22.0]), np.eye(3)))
        shafts.append(smooth_tube([neck_end + [side * 1.0, 3.0, -13.0], [side * (hx + 22.0), head_y, -1000.0]],
                                  [14.0, 14.0]))
    solids["iliopsoas"] = Solid(tuple(iliopsoas))
    solids["iliacus"] = Solid(tuple(iliacus))
    solids["glutei"] = Solid(tuple(glutei), 0.05, rough)
    sacral_tilt = _turn("x", u(20, 30))
    solids["sacrum"] = Solid((
        Ellipsoid(np.array([0.0, spine.body_y - 5.0, promontory - 20.0]), np.array([u(48, 55), u(17, 21), 22.0]),
                  sacral_tilt),
        Ellipsoid(np.array([0.0, spine.body_y - 22.0, promontory - 60.0]), np.array([38.0, 13.0, 25.0]), sacral_tilt),
        Ellipsoid(np.array([0.0, spine.body_y - 30.0, promontory - 95.0]), np.array([18.0, 9.0, 22.0]), sacral_tilt)))
    solids["iliac_wings"] = Solid(tuple(wings))
    solids["iliac_bodies"] = Solid(tuple(bodies))
    solids["acetabula"] = Solid(tuple(cups))
    solids["pubis"] = Solid(tuple(pubis))
    solids["ischia"] = Solid(tuple(ischia))
    solids["joint_spaces"] = Solid(tuple(Ellipsoid(h.centre, h.radii + 2.0, np.eye(3)) for h in heads))
    solids["femoral_heads"] = Solid(tuple(heads))
    solids["femoral_necks"] = Solid(tuple(necks))
    solids["femoral_shafts"] = Solid(tuple(shafts))
    solids["iliac_arteries"] = Solid(tuple(arteries))
    solids["iliac_veins"] = Solid(tuple(veins))
    # The sigmoid leaves the descending colon in the left iliac fossa, crosses to the midline and becomes the
    # rectum in front of the sacrum; the bladder lies behind the symphysis, filled to a varying degree.
    rectum_r = u(14, 20)
    solids["rectum"] = Solid((smooth_tube([[-u(55, 75), u(-10, 15), bifurcation - 60.0],
                                           [u(-15, 15), head_y + u(10, 30), promontory - u(20, 35)],
                                           [0.0, spine.body_y + 8.0, head_z],
                                           [0.0, spine.body_y + 5.0, symphysis_bottom - 40.0]], [rectum_r] * 4),),
                             0.06, rough)
    solids["bladder"] = Solid((_ellipsoid(rng, [u(-8, 8), head_y + u(25, 40), symphysis_bottom + u(30, 45)],
                                          [u(28, 50), u(22, 38), u(22, 42)], 10),), 0.04, rough)
    return Pelvis(bifurcation, confluence, promontory, head_z, symphysis_bottom, head_r, solids)


def with_pelvis(subject: AbdomenSubject) -> AbdomenSubject:
    """The same patient with a pelvis: the aorta and IVC (and their labels) end where they divide."""
    pelvis = draw_pelvis(subject)
    organs = dict(subject.organs)
    for name, z in (("aorta", pelvis.bifurcation_z), ("ivc", pelvis.confluence_z)):
        solid = organs[name]
        organs[name] = replace(solid, shapes=(tube_ending_at(solid.shapes[0], z),) + solid.shapes[1:])
    return replace(subject, organs=organs, pelvis=pelvis)


def paint_pelvis(canvas) -> None:
    """Paints the subject's pelvis on a ct._Canvas, label 0 throughout: muscles, gut, bladder, vessels, bones."""
    subject = canvas.subject
    pelvis, hu = subject.pelvis, subject.hu
    if pelvis is None:
        return
    solids = pelvis.solids
    muscle = canvas.textured(hu["muscle"], 5.0)
    for name in ("glutei", "iliopsoas", "iliacus"):
        canvas.paint(solids[name], muscle, 0, where="body")
    bowel = subject.fields["bowel"]

    def rectum(level, x, y, z):
        mottled = bowel(x, y, z)
        lumen = np.where(mottled > 0.0, np.float32(hu["gas"]), np.float32(hu["stool"]) + 30.0 * mottled)
        return np.where(level > 0.85, np.float32(hu["wall"]), lumen)

    canvas.paint(solids["rectum"], rectum, 0, where="cavity")
    canvas.paint(solids["bladder"], lambda level, x, y, z: np.where(level > 0.93, np.float32(hu["wall"]),
                                                                    np.float32(hu["fluid"])), 0, where="cavity")
    canvas.paint(solids["iliac_veins"], hu["ivc"], 0, where="body")
    canvas.paint(solids["iliac_arteries"], hu["aorta"], 0, where="body")
    bone_field = subject.fields["bone"]

    def bone(shell_mm: float, thickness_mm: float):
        # Cortex as a shell shell_mm deep for a shape thickness_mm across (levels are relative).
        shell = np.float32(1.0 - shell_mm / thickness_mm)

        def fill(level, x, y, z):
            return np.where(level > shell, np.float32(hu["cortical"]),
                            np.float32(hu["cancellous"]) + 45.0 * bone_field(x, y, z))
        return fill

    for name in BONES:
        canvas.paint(solids[name], bone(2.0, 12.0 if name == "iliac_wings" else 25.0), 0, where="body")
    canvas.paint(solids["joint_spaces"], hu["cartilage"] * 0.4, 0, where="body")
    for name in FEMURS:
        canvas.paint(solids[name], bone(2.5, pelvis.head_radius), 0, where="body")
