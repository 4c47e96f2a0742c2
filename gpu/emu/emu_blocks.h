// SPDX-License-Identifier: MIT
// gpu/emu/emu_blocks.h - the synthetic blocks both emulations (bq_dec_emu.cpp, bq_enc_emu.cpp;
// see run_emu.sh) check beside the dump's: odd geometries (head dims 1024, 96, 6, 4; one-token
// and 700-token slabs; bf16), zeros, a constant, random values, inf/NaN at the ends and a bf16
// value past 2^56, at first tokens 0, 5, 64 and near 2^32; each through four chains.  run(chain,
// geometry, block, damage) gets them; damage: how many damaged copies the decoder tries.
#pragma once
template <class Run> static void emu_synthetic_blocks(uint64_t (*rnd)(), Run run)
{
	kvt_codec_geom geoms[] = {
	    {2, 2, 128, 64, KVT_DTYPE_BF16, 0},	 {1, 1, 6, 3, KVT_DTYPE_FP16, 0},
	    {1, 3, 10, 1, KVT_DTYPE_FP16, 0},	 {1, 1, 64, 300, KVT_DTYPE_FP16, 0},
	    {1, 1, 96, 33, KVT_DTYPE_FP16, 0},	 {2, 1, 6, 37, KVT_DTYPE_BF16, 0},
	    {1, 1, 1024, 24, KVT_DTYPE_BF16, 0}, {1, 1, 4, 700, KVT_DTYPE_FP16, 0}};
	uint32_t fts[4] = {0, 5, 64, 4294967000u};
	for (auto g : geoms) {
		size_t raw = kvt_geom_block_bytes(&g);
		int bf = g.dtype == KVT_DTYPE_BF16;
		for (int k = 0; k < 4; k++) {
			std::vector<uint8_t> blk(raw);
			for (size_t i = 0; i < raw / 2; i++) {
				float v = k == 0   ? 0.0f
					  : k == 1 ? 2.5f
						   : (float)((int)(rnd() % 2001) - 1000) / 300.0f *
							 (float)(1 + i % 5);
				st16(blk.data() + 2 * i, bf ? kvt_f2bf(v) : kvt_f2h(v));
			}
			if (k == 3) {
				st16(blk.data(), bf ? 0x7f80 : 0x7c00);
				st16(blk.data() + raw - 2, bf ? 0xffc1 : 0xfe01);
				if (bf && raw > 8)
					st16(blk.data() + 6, 0x5f90);
			}
			g.first_token = fts[k];
			run("bq", g, blk.data(), 3);
			run("bq:sink=70,k=0.01,v=0.3", g, blk.data(), 0);
			run("bq:rope=10000", g, blk.data(), 3);
			run("bq:k=0.2,v=0.1,dup=4,outl=2,rope=500000", g, blk.data(), 2);
		}
	}
}
