"""transform: rewrites a CUDA backend .cu file into C++ that g++ compiles against the CPU emulator.

The two CUDA-only syntaxes the backend uses become calls into emu_device.h: a kernel launch
`k<<<grid, block, smem, stream>>>(args)` becomes `tl_emu_launch(k, grid, block, smem, stream, args)` (launches
must name all four configuration values), and `extern __shared__ __align__(N) unsigned char name[];` becomes a
pointer to the block's dynamic shared memory. Usage: transform.py IN.cu OUT.cpp"""
import re
import sys

src = open(sys.argv[1]).read()
src = re.sub(r'(\w+)<<<(.*?)>>>\(', lambda m: 'tl_emu_launch(%s, %s, ' % (m.group(1), m.group(2)), src, flags=re.S)
src = re.sub(r'extern __shared__ __align__\(\d+\) unsigned char (\w+)\[\];',
             r'unsigned char *\1 = (unsigned char *)tl_emu_dyn_smem();', src)
open(sys.argv[2], 'w').write(src)
