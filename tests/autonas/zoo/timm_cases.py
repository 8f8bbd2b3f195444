"""The timm sample of the NAS coverage survey and tests: one entry per architecture, every family covered.

A *family* is the ``timm.models`` module that defines the architecture (``timm.models._registry.
_model_to_module``): timm 1.0.31 ships 98 of them and every one has at least one entry here. Within
a family the smallest variant was taken (parameters counted on the meta device), plus extra variants
where a family holds distinct layer kinds (EfficientNet-builder: MnasNet/FBNet/SPNASNet/TinyNet/
MixNet, TF "same" padding, GroupNorm; byobnet: RepVGG/MobileOne/GENet/ResNet-ts/ECA/GC; ...).

``input_size`` is the side of the square RGB input (batch 1..4): the smallest of 64, 96, ..., 256
that the model accepts (64 is the floor on purpose: at 32 many CNNs end in 1x1 maps and hybrid models
in one-token attention, which would hide slicing mistakes). ``img_size``, when set, is passed to
``timm.create_model`` (``img_size=``) for models whose position embeddings / attention biases fix
their input size; it always equals ``input_size``. Every model is built with ``pretrained=False,
num_classes=10``. Sizes were found by a prober (forward at batch 2, eval) during the survey.

``EXCLUDED`` lists what was left out and why (nothing silently); ``bench/timm_zoo.py`` records
per-case failures (timeouts over its limit, crashes) rather than dropping cases.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CASES", "EXCLUDED", "FAMILIES", "TimmCase"]


class TimmCase(NamedTuple):
    """One timm architecture of the sample."""

    name: str  # timm.create_model name
    family: str  # the timm.models module defining it
    input_size: int  # side of the square 3-channel input
    img_size: int | None = None  # create_model(img_size=...) for fixed-size transformers


CASES: list[TimmCase] = [
    # resnet: ResNet/ResNeXt/SE/ECA variants on nn.BatchNorm2d; d = deep stem + avg-pool downsample,
    # t = tiered stem, blur = anti-aliased (BlurPool2d, a fixed depthwise filter), rs = ResNet-RS
    TimmCase("resnet18", "resnet", 64),
    TimmCase("resnet50", "resnet", 64),  # the reference size of issue 11's convert-time target
    TimmCase("resnet18d", "resnet", 64),
    TimmCase("resnet10t", "resnet", 64),
    TimmCase("seresnext26d_32x4d", "resnet", 64),
    TimmCase("ecaresnet26t", "resnet", 64),
    TimmCase("resnetblur18", "resnet", 64),
    TimmCase("resnetrs50", "resnet", 64),
    # resnetv2: pre-activation ResNets; _bit = Big Transfer: StdConv2d + GroupNormAct
    TimmCase("resnetv2_18", "resnetv2", 64),
    TimmCase("resnetv2_50x1_bit", "resnetv2", 64),
    # efficientnet: the EfficientNet builder (BatchNormAct2d everywhere, SE, depthwise); tf_ = Conv2dSame
    # ("same" padding via F.pad + F.conv2d); _gn = GroupNormAct; also MnasNet, FBNet-C, SPNASNet,
    # TinyNet and MixNet (MixedConv2d: channel split into kernel groups)
    TimmCase("efficientnet_b0", "efficientnet", 64),
    TimmCase("efficientnet_lite0", "efficientnet", 64),
    TimmCase("efficientnet_es", "efficientnet", 64),
    TimmCase("efficientnet_b0_gn", "efficientnet", 64),
    TimmCase("tf_efficientnet_b0", "efficientnet", 64),
    TimmCase("tf_efficientnetv2_b0", "efficientnet", 64),
    TimmCase("efficientnetv2_rw_t", "efficientnet", 64),
    TimmCase("mnasnet_small", "efficientnet", 64),
    TimmCase("semnasnet_050", "efficientnet", 64),
    TimmCase("fbnetc_100", "efficientnet", 64),
    TimmCase("spnasnet_100", "efficientnet", 64),
    TimmCase("tinynet_e", "efficientnet", 64),
    TimmCase("mixnet_s", "efficientnet", 64),
    # mobilenetv3: MobileNetV3 (hard-swish, SE), LCNet, FBNetV3, MobileNetV4 (UIR blocks, layer scale;
    # hybrid = mobile multi-query attention)
    TimmCase("mobilenetv3_small_050", "mobilenetv3", 64),
    TimmCase("tf_mobilenetv3_small_minimal_100", "mobilenetv3", 64),
    TimmCase("lcnet_050", "mobilenetv3", 64),
    TimmCase("fbnetv3_b", "mobilenetv3", 64),
    TimmCase("mobilenetv4_conv_small_035", "mobilenetv3", 64),
    TimmCase("mobilenetv4_hybrid_medium", "mobilenetv3", 64),
    # mobilenetv5: Gemma-3n vision tower (80M params: the smallest variant), RmsNorm2d, MQA
    TimmCase("mobilenetv5_base", "mobilenetv5", 64),
    # regnet: RegNetX/Y (grouped convs, SE) and RegNetZ, BatchNormAct2d
    TimmCase("regnetx_002", "regnet", 64),
    TimmCase("regnety_002", "regnet", 64),
    TimmCase("regnetz_005", "regnet", 64),
    # byobnet: "bring your own blocks": RepVGG, MobileOne (reparameterizable branches), GENet,
    # ResNet-ts (timm stem), ECA and global-context attention
    TimmCase("repvgg_a0", "byobnet", 64),
    TimmCase("mobileone_s0", "byobnet", 64),
    TimmCase("gernet_s", "byobnet", 64),
    TimmCase("resnet32ts", "byobnet", 64),
    TimmCase("eca_resnext26ts", "byobnet", 64),
    TimmCase("gcresnext26ts", "byobnet", 64),
    # byoanet: byobnet with self-attention blocks: HaloNet (needs 256: halo blocks of 8 at stride 32),
    # BoTNet (fixed size: relative position embedding), LambdaNet
    TimmCase("halonet_h1", "byoanet", 256),
    TimmCase("botnet26t_256", "byoanet", 64, 64),
    TimmCase("lambda_resnet26t", "byoanet", 64),
    # vovnet: one-shot aggregation (concat of every layer of a stage), eSE attention
    TimmCase("ese_vovnet19b_slim_dw", "vovnet", 64),
    # cspnet: cross-stage partial nets (channel split of a stage), Focus stem (space-to-depth slicing),
    # Darknet
    TimmCase("cs3darknet_focus_s", "cspnet", 64),
    TimmCase("cs3darknet_s", "cspnet", 64),
    TimmCase("cspresnet50", "cspnet", 64),
    TimmCase("darknet17", "cspnet", 64),
    # cspnext: RTMDet's CSPNeXt backbone
    TimmCase("cspnext_tiny", "cspnext", 64),
    # densenet: dense concatenation, BatchNormAct2d
    TimmCase("densenet121", "densenet", 64),
    # dpn: dual-path nets (residual + dense paths: channel slicing and concat)
    TimmCase("dpn48b", "dpn", 64),
    # res2net: hierarchical residual splits (torch.split of the block width)
    TimmCase("res2net50_48w_2s", "res2net", 64),
    # ghostnet: ghost modules (cheap depthwise half concatenated, then sliced x[:, :oup]); v2 adds
    # DFC attention, v3 reparameterizable branches
    TimmCase("ghostnet_050", "ghostnet", 64),
    TimmCase("ghostnetv2_100", "ghostnet", 64),
    TimmCase("ghostnetv3_050", "ghostnet", 64),
    # repghost: re-parameterized ghost modules (feature reuse by add instead of concat)
    TimmCase("repghostnet_050", "repghost", 64),
    # nfnet: normalizer-free nets: ScaledStdConv2d, no norm layers, gamma/skip gains
    TimmCase("nf_resnet26", "nfnet", 64),
    TimmCase("nf_regnet_b0", "nfnet", 64),
    # convnext: LayerNorm2d (channels-first, permute + F.layer_norm), layer scale gamma; v2 = GRN
    TimmCase("convnext_atto", "convnext", 64),
    TimmCase("convnextv2_atto", "convnext", 64),
    # metaformer: PoolFormer (v1: GroupNorm1 + layer scale, v2: LayerNorm2d), ConvFormer, CAFormer
    TimmCase("poolformer_s12", "metaformer", 64),
    TimmCase("poolformerv2_s12", "metaformer", 64),
    TimmCase("convformer_s18", "metaformer", 64),
    TimmCase("caformer_s18", "metaformer", 64),
    # cait: class-attention in image transformers, LayerScale, talking heads
    TimmCase("cait_xxs24_224", "cait", 64, 64),
    # vision_transformer: ViT (fused qkv Linear, cls token, pos embed); reg = register tokens + GAP
    TimmCase("vit_tiny_patch16_224", "vision_transformer", 64, 64),
    TimmCase("vit_little_patch16_reg1_gap_256", "vision_transformer", 64, 64),
    # deit: DeiT (distillation token), DeiT-III (layer scale)
    TimmCase("deit_tiny_patch16_224", "deit", 64, 64),
    TimmCase("deit_tiny_distilled_patch16_224", "deit", 64, 64),
    TimmCase("deit3_small_patch16_224", "deit", 64, 64),
    # beit: relative position bias, layer scale (no smaller variant than base, 86M)
    TimmCase("beit_base_patch16_224", "beit", 64, 64),
    # eva: EVA-02 (rotary embeddings, SwiGLU MLP, separate q/k/v biases)
    TimmCase("eva02_tiny_patch14_224", "eva", 64, 64),
    # vision_transformer_hybrid: ResNetV2 (StdConv2d) stem + ViT
    TimmCase("vit_tiny_r_s16_p8_224", "vision_transformer_hybrid", 64, 64),
    # vision_transformer_relpos: ViT with relative position bias (shared srelpos variant)
    TimmCase("vit_srelpos_small_patch16_224", "vision_transformer_relpos", 64, 64),
    # vision_transformer_sam: SAM image encoder (windowed attention, decomposed rel-pos, neck convs)
    TimmCase("samvit_base_patch16_224", "vision_transformer_sam", 64, 64),
    # naflexvit: NaFlex ViT (variable resolution / patch packing; 86M: the smallest variant)
    TimmCase("naflexvit_base_patch16_gap", "naflexvit", 64),
    # swin_transformer: shifted-window attention (roll, window partition reshapes), patch merging
    TimmCase("swin_tiny_patch4_window7_224", "swin_transformer", 64, 64),
    # swin_transformer_v2: cosine attention with logit scale, continuous position bias MLP
    TimmCase("swinv2_tiny_window8_256", "swin_transformer_v2", 64, 64),
    # swin_transformer_v2_cr: Christoph Riedel's Swin-V2 implementation (ns = no stage norm)
    TimmCase("swinv2_cr_tiny_ns_224", "swin_transformer_v2_cr", 64, 64),
    # pvt_v2: pyramid ViT v2 (spatial-reduction attention: conv on reshaped tokens)
    TimmCase("pvt_v2_b0", "pvt_v2", 64),
    # mobilevit: conv + transformer (unfold/fold of patches); v2 = separable linear attention
    TimmCase("mobilevit_xxs", "mobilevit", 64),
    TimmCase("mobilevitv2_050", "mobilevit", 64),
    # efficientvit_mit: MIT EfficientViT (multi-scale linear attention, ReLU attention)
    TimmCase("efficientvit_b0", "efficientvit_mit", 64),
    # efficientvit_msra: Microsoft EfficientViT (cascaded group attention: per-head chunks)
    TimmCase("efficientvit_m0", "efficientvit_msra", 64, 64),
    # levit: LeViT (attention with biases fixed by resolution; conv variant keeps NCHW)
    TimmCase("levit_128s", "levit", 64, 64),
    TimmCase("levit_conv_128s", "levit", 64, 64),
    # coat: co-scale conv-attentional transformers (conv position encodings, factorized attention)
    TimmCase("coat_lite_tiny", "coat", 64, 64),
    TimmCase("coat_tiny", "coat", 64, 64),
    # crossvit: two-branch ViT with cross attention (fixed 240: the two branches' sizes are tied)
    TimmCase("crossvit_tiny_240", "crossvit", 240),
    # hrnet: parallel multi-resolution branches with fuse layers (upsample + add)
    TimmCase("hrnet_w18_small", "hrnet", 64),
    # inception_v3 / inception_v4 / inception_resnet_v2: multi-branch concat (96: valid 3x3 convs)
    TimmCase("inception_v3", "inception_v3", 96),
    TimmCase("inception_v4", "inception_v4", 96),
    TimmCase("inception_resnet_v2", "inception_resnet_v2", 96),
    # xception (legacy) and xception_aligned (separable convs; p = pre-activation)
    TimmCase("legacy_xception", "xception", 64),
    TimmCase("xception41p", "xception_aligned", 64),
    # rexnet: ReXNet (partial residual: x[:, :C] += shortcut, channel slicing)
    TimmCase("rexnet_100", "rexnet", 64),
    # hardcorenas: latency-searched MobileNet-like nets (EfficientNet builder blocks)
    TimmCase("hardcorenas_a", "hardcorenas", 64),
    # selecsls: SelecSLS (concat of selected features)
    TimmCase("selecsls42", "selecsls", 64),
    # tresnet: TResNet (SpaceToDepth stem, anti-aliasing, BatchNormAct2d with leaky ReLU)
    TimmCase("tresnet_m", "tresnet", 64),
    # sknet: selective kernel (split attention over kernel branches)
    TimmCase("skresnet18", "sknet", 64),
    # resnest: split attention (radix groups: reshape + softmax over radix)
    TimmCase("resnest14d", "resnest", 64),
    # rdnet: DenseNets revisited (dense concat + LayerNorm2d + layer scale)
    TimmCase("rdnet_tiny", "rdnet", 64),
    # edgenext: split depthwise transpose attention (channel split into scales, XCA)
    TimmCase("edgenext_xx_small", "edgenext", 64),
    # fastvit: reparameterizable token mixing (RepMixer), layer scale
    TimmCase("fastvit_t8", "fastvit", 64),
    # repvit: RepViT (MobileNet-style reparameterizable blocks, BatchNorm fused in convs)
    TimmCase("repvit_m1", "repvit", 64),
    # convit: gated positional self-attention
    TimmCase("convit_tiny", "convit", 64, 64),
    # convmixer: patch conv + depthwise/pointwise mixing (only variant family: 768 wide, 32 deep)
    TimmCase("convmixer_768_32", "convmixer", 64),
    # cpubone: CPUBone (conv backbone for devices with low parallelism)
    TimmCase("cpubone_nano", "cpubone", 64),
    # csatv2: CSATv2 (DCT frequency-domain stem + spatial attention; 64: its 2x2 conv needs >= 2x2 maps)
    TimmCase("csatv2", "csatv2", 64),
    # davit: dual attention (spatial windows + channel groups)
    TimmCase("davit_tiny", "davit", 64),
    # dla: deep layer aggregation (tree of concat/add aggregations)
    TimmCase("dla46x_c", "dla", 64),
    # efficientformer: MetaFormer with 4D/3D stages (fixed 224: attention biases of a 7x7 map)
    TimmCase("efficientformer_l1", "efficientformer", 224),
    # efficientformer_v2: EfficientFormerV2 (attention with talking heads and biases by resolution)
    TimmCase("efficientformerv2_s0", "efficientformer_v2", 64, 64),
    # efficientvim: EfficientViM (Mamba-style hidden-state mixer in plain conv/softmax/matmul)
    TimmCase("efficientvim_m1", "efficientvim", 64),
    # fasternet: partial convolution (conv on x[:, :C/4], the rest passes: split + cat)
    TimmCase("fasternet_t0", "fasternet", 64),
    # focalnet: focal modulation (gates split from one projection)
    TimmCase("focalnet_tiny_srf", "focalnet", 64),
    # gcvit: global context ViT
    TimmCase("gcvit_xxtiny", "gcvit", 64, 64),
    # hgnet: PP-HGNet(V2): learnable affine blocks, concat aggregation
    TimmCase("hgnetv2_b0", "hgnet", 64),
    # hiera: hierarchical ViT with mask-unit attention (token reorderings)
    TimmCase("hiera_tiny_224", "hiera", 64, 64),
    # hieradet_sam2: SAM2's Hiera image encoder
    TimmCase("hieradet_small", "hieradet_sam2", 64),
    # iformer: iFormer (mobile ConvNet + transformer hybrid)
    TimmCase("iformer_t", "iformer", 64),
    # inception_next: InceptionNeXt (depthwise conv on channel splits: torch.split)
    TimmCase("inception_next_atto", "inception_next", 64),
    # lcnetv2: PP-LCNetV2 (re-parameterizable multi-scale depthwise branches)
    TimmCase("lcnetv2_small", "lcnetv2", 64),
    # lowformer: LowFormer (conv + attention on downsampled maps)
    TimmCase("lowformer_b0", "lowformer", 64),
    # mambaout: gated CNN blocks (chunk of one projection into gate/value/conv parts)
    TimmCase("mambaout_femto", "mambaout", 64),
    # maxxvit: MaxViT (block + grid attention, MBConv), CoAtNet
    TimmCase("maxvit_pico_rw_256", "maxxvit", 64, 64),
    TimmCase("coatnet_pico_rw_224", "maxxvit", 64, 64),
    # mlp_mixer: MLP-Mixer, gMLP (spatial gating: chunk), ResMLP (Affine, layer scale)
    TimmCase("gmlp_ti16_224", "mlp_mixer", 64, 64),
    TimmCase("mixer_s16_224", "mlp_mixer", 64, 64),
    TimmCase("resmlp_12_224", "mlp_mixer", 64, 64),
    # mvitv2: multiscale ViT v2 (pooling attention, decomposed rel-pos)
    TimmCase("mvitv2_tiny", "mvitv2", 64, 64),
    # nasnet / pnasnet: NAS cells (only large variants exist, 85M/82M)
    TimmCase("nasnetalarge", "nasnet", 64),
    TimmCase("pnasnet5large", "pnasnet", 64),
    # nest: nested hierarchical transformer (block aggregation)
    TimmCase("nest_tiny", "nest", 64, 64),
    # nextvit: Next-ViT (NCB/NTB blocks, concat of conv and attention paths)
    TimmCase("nextvit_small", "nextvit", 64),
    # pit: pooling-based ViT (depthwise conv pooling on reshaped tokens, cls token)
    TimmCase("pit_ti_224", "pit", 64, 64),
    # senet: the legacy SENet/SE-ResNet ports
    TimmCase("legacy_seresnet18", "senet", 64),
    # sequencer: BiLSTM token mixing (nn.LSTM)
    TimmCase("sequencer2d_s", "sequencer", 64, 64),
    # shvit: single-head ViT (attention on a channel slice: split + cat)
    TimmCase("shvit_s1", "shvit", 64),
    # starnet: star operation (element-wise product of two branches)
    TimmCase("starnet_s050", "starnet", 64),
    # swiftformer: efficient additive attention
    TimmCase("swiftformer_xs", "swiftformer", 64, 64),
    # tiny_vit: TinyViT (MBConv + windowed attention with biases)
    TimmCase("tiny_vit_5m_224", "tiny_vit", 64),
    # tnt: transformer in transformer (inner pixel tokens)
    TimmCase("tnt_s_patch16_224", "tnt", 64, 64),
    # twins: PCPVT (conditional position encoding) and SVT (locally-grouped + global attention)
    TimmCase("twins_pcpvt_small", "twins", 64, 64),
    TimmCase("twins_svt_small", "twins", 64, 64),
    # vgg: VGG with timm's ConvMlp pre-logits (7x7 conv classifier; 129M params, the smallest)
    TimmCase("vgg11_bn", "vgg", 64),
    # visformer: vision-friendly transformer (conv stages + attention stages on NCHW)
    TimmCase("visformer_tiny", "visformer", 64, 64),
    # vitamin: ViTamin (MbConv stages + ViT)
    TimmCase("vitamin_small_224", "vitamin", 64, 64),
    # volo: outlook attention (unfold/fold), class attention
    TimmCase("volo_d1_224", "volo", 64, 64),
    # xcit: cross-covariance attention (attention over channels), LPI, class attention
    TimmCase("xcit_nano_12_p16_224", "xcit", 64, 64),
    # deepseek_vit / gemma4_vit / qwen3_vit: LLM vision towers, only large variants exist
    # (412M/167M/87M params); deepseek's patch 14 needs a multiple of 14
    TimmCase("deepseek_vit_412m", "deepseek_vit", 56),
    TimmCase("gemma4_vit_167m", "gemma4_vit", 64),
    TimmCase("qwen3_vit_88m", "qwen3_vit", 64),
]

#: every family in the sample, in order of first appearance
FAMILIES: list[str] = list(dict.fromkeys(c.family for c in CASES))

#: families or variants deliberately not sampled, with the reason. Empty: all 98 timm 1.0.31 model
#: modules are covered; ``bench/timm_zoo.py`` records the cases that fail to build, run or convert
#: within its per-model limit instead of dropping them here.
EXCLUDED: dict[str, str] = {}
